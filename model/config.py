"""One frozen dataclass that drives the whole model.

Every option is a keyword-only field with a JSON-friendly type (int, float, bool, None, or
a string out of a ``Literal`` of choices), so a job YAML can name a preset plus a dict of
overrides and the trainer can build the final config with
``dataclasses.replace(preset(), **overrides)`` (torchtitan's frozen, keyword-only, slotted
config). ``__post_init__`` validates the combination and raises ``ValueError`` with a
message that names the offending field(s).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

PositionKind = Literal["sinusoidal", "learned", "rope", "alibi", "none"]
RopeScalingType = Literal["linear", "ntk"]
AttnBackend = Literal["auto", "sdpa", "flex"]
ExpertBackend = Literal["auto", "grouped_mm", "loop"]
POSITIONS: tuple[str, ...] = typing.get_args(PositionKind)
ROPE_SCALING_TYPES: tuple[str, ...] = typing.get_args(RopeScalingType)
ATTN_BACKENDS: tuple[str, ...] = typing.get_args(AttnBackend)
EXPERT_BACKENDS: tuple[str, ...] = typing.get_args(ExpertBackend)


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelConfig:
    """All options of the decoder-only transformer (dense, MoE, RMT)."""

    # --- sizes -----------------------------------------------------------------------
    vocab_size: int = 256
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int | None = None  # None = n_heads (MHA); fewer = grouped-query attention
    max_seq_len: int = 128
    # SwiGLU hidden size; None = 8/3 * dim rounded up to mlp_multiple_of (Llama sizing,
    # which keeps the parameter count of a 4*dim GELU MLP; Shazeer 2020, "GLU Variants").
    mlp_hidden: int | None = None
    mlp_multiple_of: int = 64
    norm_eps: float = 1e-5

    # --- positions -------------------------------------------------------------------
    positions: PositionKind = "rope"
    rope_base: float = 10000.0
    # Context extension factor s >= 1. "linear" = position interpolation (Chen et al. 2023,
    # arXiv:2306.15595): positions are divided by s. "ntk" = NTK-aware scaling (bloc97,
    # 2023; used by Code Llama-style long-context fine-tunes): base becomes
    # base * s ** (d / (d - 2)), which keeps the highest frequency and stretches the lowest.
    rope_scaling: float = 1.0
    rope_scaling_type: RopeScalingType = "linear"

    # --- attention masks -------------------------------------------------------------
    window: int | None = None  # sliding window: query i sees keys i-W+1 .. i
    sinks: int = 0  # first S tokens always visible (StreamingLLM, Xiao et al. 2023); needs a window to matter
    attn_backend: AttnBackend = "auto"  # auto: flex_attention on CUDA, explicit-mask SDPA on CPU

    # --- recurrent memory (Bulatov et al. 2022) --------------------------------------
    memory_tokens: int = 0  # M; 0 = off
    segment_len: int | None = None  # tokens per segment (required when memory_tokens > 0)
    bptt_segments: int = 2  # gradients flow through at most this many segments

    # --- mixture of experts ----------------------------------------------------------
    n_experts: int = 0  # 0 = dense model
    top_k: int = 2
    moe_every: int = 1  # layer i is MoE iff (i + 1) % moe_every == 0
    expert_hidden: int | None = None  # None = the dense SwiGLU hidden size
    capacity_factor: float | None = None  # None = dropless
    aux_loss_coef: float = 0.01  # Switch Transformer (Fedus et al. 2021) uses 1e-2
    z_loss_coef: float = 0.001  # ST-MoE (Zoph et al. 2022) uses 1e-3
    bias_balancing: bool = False  # auxiliary-loss-free balancing (Wang et al. 2024)
    bias_update_rate: float = 0.001  # u in DeepSeek-V3 (arXiv:2412.19437)
    router_renormalize: bool = True  # top-k gate weights sum to 1 (Mixtral style)
    expert_backend: ExpertBackend = "auto"  # auto: torch._grouped_mm on CUDA bf16 sm90+, else loop

    # --- embeddings, init, regularisation, loss --------------------------------------
    tie_embeddings: bool = True
    init_std: float = 0.02  # GPT-2 (Radford et al. 2019)
    dropout: float = 0.0  # on embeddings and residual branches (nanoGPT placement)
    loss_chunk_tokens: int = 2048  # tokens per chunk of the fused head + cross-entropy

    def __post_init__(self) -> None:
        _check_types(self)
        errors = list(_semantic_errors(self))
        if errors:
            raise ValueError("invalid ModelConfig: " + "; ".join(errors))

    # --- derived sizes -----------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        """Number of key/value heads (equals n_heads for multi-head attention)."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_dim(self) -> int:
        """Per-head width."""
        return self.dim // self.n_heads

    @property
    def ffn_hidden(self) -> int:
        """Hidden width of the dense SwiGLU MLP."""
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        m = self.mlp_multiple_of
        return -(-(8 * self.dim // 3) // m) * m

    @property
    def moe_hidden(self) -> int:
        """Hidden width of one expert's SwiGLU MLP."""
        return self.ffn_hidden if self.expert_hidden is None else self.expert_hidden

    def is_moe_layer(self, layer: int) -> bool:
        """Whether block ``layer`` (0-based) uses a mixture of experts."""
        return self.n_experts > 0 and (layer + 1) % self.moe_every == 0

    @property
    def n_moe_layers(self) -> int:
        """How many blocks are MoE blocks."""
        return sum(self.is_moe_layer(i) for i in range(self.n_layers))

    @property
    def segment_tokens(self) -> int:
        """Sequence length the blocks see per RMT segment: read memory + segment + write memory."""
        return (self.segment_len or 0) + 2 * self.memory_tokens

    def to_dict(self) -> dict[str, object]:
        """Plain dict of all fields (JSON-serialisable)."""
        return dataclasses.asdict(self)


def _value_types(annotation: object) -> tuple[type, ...]:
    """The classes a field's value may have: ``int | None`` -> (int, NoneType), a ``Literal``
    of strings -> (str,) (which string is a semantic check)."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return tuple(dict.fromkeys(type(choice) for choice in typing.get_args(annotation)))
    if origin in (typing.Union, types.UnionType):
        return tuple(t for arg in typing.get_args(annotation) for t in _value_types(arg))
    assert isinstance(annotation, type), annotation
    return (annotation,)


def _field_types() -> dict[str, tuple[tuple[type, ...], str]]:
    """Per field: the classes its value may have and how an error message names them."""
    out = {}
    for name, annotation in typing.get_type_hints(ModelConfig).items():
        allowed = _value_types(annotation)
        out[name] = allowed, " | ".join("None" if t is type(None) else t.__name__ for t in allowed)
    return out


_FIELD_TYPES = _field_types()


def _check_types(cfg: ModelConfig) -> None:
    """Reject values whose type does not match the field annotation (e.g. from YAML)."""
    for f in dataclasses.fields(cfg):
        allowed, described = _FIELD_TYPES[f.name]
        value = getattr(cfg, f.name)
        ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
        if not ok and float in allowed and isinstance(value, int) and not isinstance(value, bool):
            object.__setattr__(cfg, f.name, float(value))  # YAML "1" for a float field
            ok = True
        if not ok:
            raise ValueError(f"invalid ModelConfig: {f.name}={value!r} must be of type {described}")


def _semantic_errors(c: ModelConfig) -> Iterator[str]:
    """Every problem with the field combination, as readable messages."""
    for name in ("vocab_size", "dim", "n_layers", "n_heads", "max_seq_len", "mlp_multiple_of",
                 "bptt_segments", "top_k", "moe_every", "loss_chunk_tokens"):
        if getattr(c, name) < 1:
            yield f"{name} must be >= 1, got {getattr(c, name)}"
    for name in ("sinks", "memory_tokens", "n_experts"):
        if getattr(c, name) < 0:
            yield f"{name} must be >= 0, got {getattr(c, name)}"
    for name in ("mlp_hidden", "expert_hidden", "segment_len", "window", "n_kv_heads"):
        v = getattr(c, name)
        if v is not None and v < 1:
            yield f"{name} must be >= 1 or None, got {v}"
    if c.n_heads >= 1 and c.dim % c.n_heads:
        yield f"dim={c.dim} must be divisible by n_heads={c.n_heads}"
    if c.n_kv_heads is not None and c.n_kv_heads >= 1 and c.n_heads % c.n_kv_heads:
        yield f"n_heads={c.n_heads} must be divisible by n_kv_heads={c.n_kv_heads}"
    if c.positions not in POSITIONS:
        yield f"positions={c.positions!r} must be one of {POSITIONS}"
    if c.positions == "rope" and c.n_heads >= 1 and c.head_dim % 2:
        yield f"rope needs an even head_dim, got {c.head_dim}"
    if c.rope_base <= 1.0:
        yield f"rope_base must be > 1, got {c.rope_base}"
    if c.rope_scaling < 1.0:
        yield f"rope_scaling must be >= 1 (a context extension factor), got {c.rope_scaling}"
    if c.rope_scaling != 1.0 and c.positions != "rope":
        yield f"rope_scaling={c.rope_scaling} only applies to positions='rope'"
    if c.rope_scaling_type not in ROPE_SCALING_TYPES:
        yield f"rope_scaling_type={c.rope_scaling_type!r} must be one of {ROPE_SCALING_TYPES}"
    if c.attn_backend not in ATTN_BACKENDS:
        yield f"attn_backend={c.attn_backend!r} must be one of {ATTN_BACKENDS}"
    if c.expert_backend not in EXPERT_BACKENDS:
        yield f"expert_backend={c.expert_backend!r} must be one of {EXPERT_BACKENDS}"
    if c.memory_tokens > 0 and c.segment_len is None:
        yield "memory_tokens > 0 needs segment_len"
    if c.positions == "learned" and c.memory_tokens > 0 and c.segment_tokens > c.max_seq_len:
        yield (f"learned positions: segment_len + 2 * memory_tokens = {c.segment_tokens} "
               f"exceeds max_seq_len={c.max_seq_len}")
    if c.n_experts > 0 and c.top_k > c.n_experts:
        yield f"top_k={c.top_k} must be <= n_experts={c.n_experts}"
    if c.n_experts > 0 and c.n_moe_layers == 0:
        yield f"moe_every={c.moe_every} > n_layers={c.n_layers} leaves no MoE layer"
    if c.capacity_factor is not None and c.capacity_factor <= 0:
        yield f"capacity_factor must be > 0 or None (dropless), got {c.capacity_factor}"
    if c.bias_update_rate < 0:
        yield f"bias_update_rate must be >= 0, got {c.bias_update_rate}"
    if c.bias_balancing and c.n_experts == 0:
        yield "bias_balancing needs n_experts > 0"
    if c.aux_loss_coef < 0 or c.z_loss_coef < 0:
        yield "aux_loss_coef and z_loss_coef must be >= 0"
    if not 0.0 <= c.dropout < 1.0:
        yield f"dropout must be in [0, 1), got {c.dropout}"
    if c.init_std <= 0 or c.norm_eps <= 0:
        yield "init_std and norm_eps must be > 0"
