"""rayfleet transformer library: plain PyTorch, driven by one ``ModelConfig``.

No Ray and no torch.distributed setup in here; expert parallelism (parallelize.py) takes a
process group that the caller created.
"""

from rayfleet.model.config import ModelConfig
from rayfleet.model.flops import flops_per_token, param_counts
from rayfleet.model.loss import linear_cross_entropy
from rayfleet.model.masks import MaskSpec
from rayfleet.model.moe import MoE, update_expert_bias
from rayfleet.model.parallelize import (
    apply_expert_parallel,
    expert_parameter_names,
    expert_parameters,
    gather_full_state_dict,
    load_full_state_dict,
    non_expert_parameters,
    reduce_expert_gradients,
)
from rayfleet.model.presets import PRESETS, dense_124m, get_preset, moe_8x, tiny, tiny_moe
from rayfleet.model.transformer import LMOutput, Transformer

__all__ = [
    "PRESETS",
    "LMOutput",
    "MaskSpec",
    "MoE",
    "ModelConfig",
    "Transformer",
    "apply_expert_parallel",
    "dense_124m",
    "expert_parameter_names",
    "expert_parameters",
    "flops_per_token",
    "gather_full_state_dict",
    "get_preset",
    "linear_cross_entropy",
    "load_full_state_dict",
    "moe_8x",
    "non_expert_parameters",
    "param_counts",
    "reduce_expert_gradients",
    "tiny",
    "tiny_moe",
    "update_expert_bias",
]
