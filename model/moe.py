"""Mixture of Experts: top-k token-choice router, SwiGLU experts on a grouped GEMM.

Flow of ``MoE.forward`` (tokens flattened to (N, D)):
1. route: fp32 router logits -> softmax probabilities -> top-k experts per token
   (selection may add a balancing bias, gate weights never do);
2. permute: assignments sorted by expert with a stable argsort, per-expert counts by
   scatter-add on device (no host sync); with a capacity factor the overflow
   assignments go to a virtual expert E that sorts last and is never computed;
3. experts: grouped GEMMs (``torch._grouped_mm``; w1 and w3 stored stacked as ``w13``) on CUDA bf16 sm90+,
   else a loop over experts; with a process group (``AllToAllDispatch``, installed by
   ``parallelize.apply_expert_parallel``) the sorted rows travel to the experts' ranks and
   back with all_to_all;
4. combine: un-permute and sum the k outputs weighted by the gates. Permutations move rows
   by gathers in both directions (``gather_rows``): no scatter-add in the backward pass.
Only the loop fallback and the expert-parallel split sizes need host values.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from rayfleet.model.config import ModelConfig


_MM_OUT_DTYPE = hasattr(torch.ops.aten.mm, "dtype")  # bf16 x bf16 -> float32 GEMM (torch >= 2.8, CUDA)


class _Bf16RouterLogits(torch.autograd.Function):
    """float32 logits x @ w.T of bf16 x (N, D) and w (E, D) on CUDA: the exact products of the bf16
    values, accumulated and returned in float32 by one tensor-core GEMM (``aten.mm.dtype``,
    which has no autograd formula of its own). Upcasting both to float32 instead runs SIMT
    float32 GEMMs for these (N, D) x (D, E) products plus casts of x: 1 ms of a 23 ms moe_8x
    step on an H100. The backward takes the float32 logit gradient in bf16, the dtype of the
    gradients it produces (transformers' Mixtral computes the whole router in bf16)."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, w)
        return torch.ops.aten.mm.dtype(x, w.t(), torch.float32)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        x, w = ctx.saved_tensors
        g = grad.to(torch.bfloat16)
        return g @ w, torch.ops.aten.mm.dtype(g.t(), x, torch.float32).to(w.dtype)


class RouterOutput(NamedTuple):
    indices: Tensor  # (N, k) chosen experts
    weights: Tensor  # (N, k) fp32 gate weights
    probs: Tensor  # (N, E) fp32 softmax of the logits
    logits: Tensor  # (N, E) fp32


class Router(nn.Module):
    """Token-choice top-k router (Shazeer et al. 2017; Fedus et al. 2021)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.top_k, self.renormalize = config.top_k, config.router_renormalize
        self.bias_balancing, self.bias_update_rate = config.bias_balancing, config.bias_update_rate
        self.gate = nn.Linear(config.dim, config.n_experts, bias=False)
        # Auxiliary-loss-free balancing (Wang et al. 2024; DeepSeek-V3): a per-expert bias
        # that only affects which experts are selected. It is state, not a parameter.
        self.register_buffer("expert_bias", torch.zeros(config.n_experts))
        self.register_buffer("tokens_per_expert", torch.zeros(config.n_experts), persistent=False)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Router:
        """Follow device moves, but keep the balancing state in float32: a bf16 bias would
        swallow updates of size u, bf16 counts stop being exact at 256."""
        saved = {"expert_bias": self.expert_bias, "tokens_per_expert": self.tokens_per_expert}
        super()._apply(fn, recurse)
        for name, value in saved.items():
            setattr(self, name, value.to(getattr(self, name).device, torch.float32))
        return self

    def forward(self, x: Tensor) -> RouterOutput:
        """Route tokens ``x`` (N, D)."""
        # The router runs in fp32 even under autocast: its softmax/top-k are precision
        # sensitive ("selective precision", ST-MoE, Zoph et al. 2022).
        dtype = torch.promote_types(x.dtype, torch.float32)
        w = self.gate.weight
        with torch.autocast(x.device.type, enabled=False):
            if x.is_cuda and x.dtype == w.dtype == torch.bfloat16 and _MM_OUT_DTYPE:
                logits = _Bf16RouterLogits.apply(x, w)
            else:
                logits = F.linear(x.to(dtype), w.to(dtype))
        probs = logits.softmax(dim=-1)
        scores = probs + self.expert_bias if self.bias_balancing else probs
        indices = top_k_indices(scores, self.top_k)
        weights = probs.gather(-1, indices)
        if self.renormalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        if self.bias_balancing and self.training:
            with torch.no_grad():
                self.tokens_per_expert += expert_counts(indices, probs.shape[-1]).float()
        return RouterOutput(indices, weights, probs, logits)


SMALL_TOP_K = 4  # up to this k, top_k_indices picks by repeated argmax


def top_k_indices(scores: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` largest ``scores`` along the last dimension, largest first (ties:
    the lower index first), as ``scores.topk(k).indices``. For a router's few choices out of
    few experts it takes k argmaxes, each masking the one before: plain reductions that
    torch.compile fuses with the softmax that feeds them, where ``topk`` runs as two kernels of
    its own per layer (a radix select and a sort: 24 us of each moe_8x layer's forward on an
    H100)."""
    if k > SMALL_TOP_K:
        return scores.topk(k, dim=-1).indices
    lanes = torch.arange(scores.shape[-1], device=scores.device)
    picks = []
    for _ in range(k):
        pick = scores.argmax(dim=-1, keepdim=True)
        picks.append(pick)
        scores = scores.masked_fill(lanes == pick, float("-inf"))
    return torch.cat(picks, dim=-1)


def expert_counts(indices: Tensor, n_experts: int) -> Tensor:
    """Assignments per expert (int64, length ``n_experts``); indices >= n_experts are ignored."""
    flat = indices.reshape(-1)
    counts = torch.zeros(n_experts + 1, dtype=torch.long, device=flat.device)
    counts.scatter_add_(0, flat.clamp(max=n_experts), torch.ones_like(flat))
    return counts[:n_experts]


def load_balancing_loss(probs: Tensor, counts: Tensor) -> Tensor:
    """Switch Transformer auxiliary loss (Fedus et al. 2021, eq. 4): E * sum_i f_i * P_i.

    f_i = fraction of the N*k assignments sent to expert i (``counts`` / total; counts
    may be summed over several ranks), P_i = mean router probability of expert i over
    the local tokens. Equals 1 under perfectly uniform routing.
    """
    f = counts.to(probs.dtype) / counts.sum().clamp(min=1)
    return probs.shape[-1] * (f.detach() * probs.mean(dim=0)).sum()


def router_z_loss(logits: Tensor) -> Tensor:
    """ST-MoE router z-loss (Zoph et al. 2022, eq. 5): mean over tokens of logsumexp(x)^2."""
    return torch.logsumexp(logits, dim=-1).square().mean()


def capacity_keep(indices: Tensor, n_experts: int, capacity: int) -> Tensor:
    """Which assignments fit in an expert capacity of ``capacity`` tokens.

    Priority as in GShard (Lepikhin et al. 2020): every token's first choice before any
    second choice, then token order. Returns a bool mask shaped like ``indices``.
    """
    n, k = indices.shape
    by_priority = indices.t().reshape(-1)  # choice-major
    onehot = F.one_hot(by_priority, n_experts)
    slot = (onehot.cumsum(dim=0) * onehot).sum(dim=-1) - 1  # position in its expert's queue
    return (slot < capacity).view(k, n).t()


def swiglu(x: Tensor, w1: Tensor, w3: Tensor, w2: Tensor) -> Tensor:
    """SwiGLU MLP (Shazeer 2020) with weights in nn.Linear layout (out, in)."""
    return F.linear(F.silu(F.linear(x, w1)) * F.linear(x, w3), w2)


def grouped_mm_supported(x: Tensor) -> bool:
    """True where ``torch._grouped_mm`` has a fast kernel: CUDA, bf16 compute, sm90+ (Hopper)."""
    if not (hasattr(torch, "_grouped_mm") and x.is_cuda):
        return False
    dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else x.dtype
    try:
        return dtype == torch.bfloat16 and torch.cuda.get_device_capability(x.device) >= (9, 0)
    except (RuntimeError, AssertionError):
        return False


class GroupedExperts(nn.Module):
    """E SwiGLU experts stored as stacked weights (E, out, in), possibly a shard of them."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        e, d, h = config.n_experts, config.dim, config.moe_hidden
        self.backend = config.expert_backend
        self.n_total, self.first = e, 0  # global expert count; first global id held here
        # w1 (gate) and w3 (up) live stacked in one parameter, rows [0, H) and [H, 2H) of each
        # expert, as transformers' gate_up_proj: the grouped GEMM takes it as it is. Two
        # parameters would be concatenated in every forward pass (20 MB per moe_8x layer) and
        # their gradient split back and copied in every backward (with the fused top-k below,
        # 0.76 ms of a 20.1 ms moe_8x step with CUDA graphs on an H200:
        # bench/results/moe_w13_topk_ab.json).
        self.w13 = nn.Parameter(torch.empty(e, 2 * h, d))
        self.w2 = nn.Parameter(torch.empty(e, d, h))
        self.register_load_state_dict_pre_hook(_stack_w1_w3)

    @property
    def w1(self) -> Tensor:
        """Gate weights (E, H, D): a view of ``w13``."""
        return self.w13[:, :self.w2.shape[-1]]

    @property
    def w3(self) -> Tensor:
        """Up weights (E, H, D): a view of ``w13``."""
        return self.w13[:, self.w2.shape[-1]:]

    def forward(self, x: Tensor, counts: Tensor, all_rows: bool = False) -> Tensor:
        """Rows of ``x`` are grouped by expert with ``counts`` rows per local expert; rows
        past ``counts.sum()`` (dropped assignments) come back as zeros. ``all_rows``
        promises ``counts.sum() == len(x)`` (dropless routing): nothing to mask."""
        if self.backend == "grouped_mm" or (self.backend == "auto" and grouped_mm_supported(x)):
            return self._grouped(x, counts, all_rows)
        return self._loop(x, counts)

    def _grouped(self, x: Tensor, counts: Tensor, all_rows: bool = False) -> Tensor:
        dtype = torch.get_autocast_dtype("cuda") if x.is_cuda and torch.is_autocast_enabled("cuda") else x.dtype
        offs = counts.cumsum(0).to(torch.int32)
        # The CUDA kernel computes only the rows of the groups: rows past offs[-1] (dropped
        # assignments) of its output, and of its input's gradient, are left unwritten, i.e.
        # any bits, NaN included. Masking the output hides them in the forward pass; masking
        # the input zeroes their gradient, which would otherwise be scattered into the
        # tokens' gradients (transformers' grouped_mm_experts_forward masks both for this).
        # Dropless routing has no such rows: the masks would be two passes for nothing.
        valid = None if all_rows else (torch.arange(x.shape[0], device=x.device) < offs[-1])[:, None]
        xc = x.to(dtype) if valid is None else torch.where(valid, x.to(dtype), 0.0)

        def gmm(a: Tensor, w: Tensor) -> Tensor:  # per group g: a_g @ w[g].T
            return torch._grouped_mm(a, w.to(dtype).transpose(-2, -1), offs=offs)

        # w1 and w3 as one grouped GEMM on their stacked weights: half the launches, and one
        # input-gradient GEMM instead of two plus a sum.
        a, b = gmm(xc, self.w13).chunk(2, dim=-1)
        y = gmm(F.silu(a) * b, self.w2)
        return (y if valid is None else torch.where(valid, y, 0.0)).to(x.dtype)

    def _loop(self, x: Tensor, counts: Tensor) -> Tensor:
        sizes = counts.tolist()  # host sync: the fallback path only
        outs, start = [], 0
        for e, n in enumerate(sizes):
            outs.append(swiglu(x[start:start + n], self.w1[e], self.w3[e], self.w2[e]))
            start += n
        outs.append(x.new_zeros(x.shape[0] - start, x.shape[1]))
        return torch.cat(outs).to(x.dtype)


def stack_w1_w3(state: dict[str, Tensor], prefix: str = "") -> None:
    """Rewrite in place a state dict whose experts under ``prefix`` hold ``w1`` and ``w3`` as
    separate keys into the stacked ``w13``, so that checkpoints of that layout load."""
    if prefix + "w1" in state and prefix + "w3" in state and prefix + "w13" not in state:
        state[prefix + "w13"] = torch.cat((state.pop(prefix + "w1"), state.pop(prefix + "w3")), dim=1)


def _stack_w1_w3(module: nn.Module, state: dict[str, Tensor], prefix: str, *args: object) -> None:
    stack_w1_w3(state, prefix)


class _GatherRows(torch.autograd.Function):
    """``x[index // k]`` where ``index`` is a permutation of range(len(index)) and ``inverse``
    its inverse; ``k`` = 1 is a row permutation, ``k`` > 1 copies each row of ``x`` k times.

    Autograd's backward of an indexing is a scatter-add (atomic adds, in bf16 under bf16
    weights); knowing the inverse permutation it is a gather and, for k > 1, a sum over each
    row's k copies: no atomics, exact to the rounding of the sum.
    """

    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor, inverse: Tensor, k: int) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(inverse)
        ctx.k = k
        return x[index // k] if k > 1 else x[index]

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        (inverse,) = ctx.saved_tensors
        rows = grad[inverse]
        if ctx.k > 1:
            rows = rows.view(-1, ctx.k, grad.shape[-1]).sum(dim=1)
        return rows, None, None, None


def gather_rows(x: Tensor, index: Tensor, inverse: Tensor, k: int = 1) -> Tensor:
    """``x[index // k]`` with a gather for backward (see ``_GatherRows``)."""
    return _GatherRows.apply(x, index, inverse, k)


def inverse_permutation(perm: Tensor) -> Tensor:
    """``inv`` with ``inv[perm[i]] = i`` (one scatter of indices, no sort)."""
    return torch.empty_like(perm).scatter_(0, perm, torch.arange(perm.numel(), device=perm.device))


class _AllToAll(torch.autograd.Function):
    """all_to_all_single whose backward is the reverse all_to_all of the gradient."""

    @staticmethod
    def forward(ctx, x: Tensor, out_splits: list[int], in_splits: list[int],  # type: ignore[override]
                group: dist.ProcessGroup) -> Tensor:
        ctx.splits, ctx.group = (out_splits, in_splits), group
        out = x.new_empty((sum(out_splits), *x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        out_splits, in_splits = ctx.splits
        grad_in = grad.new_empty((sum(in_splits), *grad.shape[1:]))
        dist.all_to_all_single(grad_in, grad.contiguous(), in_splits, out_splits, group=ctx.group)
        return grad_in, None, None, None


class AllToAllDispatch:
    """Expert parallelism's token dispatch (GShard, Lepikhin et al. 2020): each of the W ranks
    of ``group`` holds the E / W contiguous experts [r * E/W, (r+1) * E/W) of a layer.

    Each rank routes its own tokens, sends every assignment to the rank that owns its expert
    with ``all_to_all_single`` (split sizes are exchanged first, as every rank must know what
    it receives), runs its local experts as one grouped GEMM and sends the results back. Both
    all-to-alls are differentiable. The caller creates the group; the model never sets up
    torch.distributed.
    """

    def __init__(self, group: dist.ProcessGroup, n_experts: int) -> None:
        self.group = group
        self.world = dist.get_world_size(group)
        self.local = n_experts // self.world

    def global_counts(self, counts: Tensor) -> Tensor:
        """Routed-token counts per expert summed over the group (balance statistics)."""
        total = counts.clone()
        dist.all_reduce(total, group=self.group)
        return total

    def run(self, experts: GroupedExperts, xs: Tensor, counts: Tensor) -> Tensor:
        """Expert outputs for the expert-sorted rows ``xs`` with ``counts`` (E,) per expert."""
        w, el = self.world, self.local
        # recv[r * el + j] = rows that rank r sends to my local expert j.
        recv = torch.empty_like(counts)
        dist.all_to_all_single(recv, counts.contiguous(), group=self.group)
        send_splits = counts.view(w, el).sum(1).tolist()  # host sync: split sizes are
        recv_splits = recv.view(w, el).sum(1).tolist()  # arguments of the collective
        n_sent = sum(send_splits)
        received = _AllToAll.apply(xs[:n_sent], recv_splits, send_splits, self.group)
        # Received rows are ordered (source rank, local expert); group them by expert.
        expert_of_row = torch.arange(el, device=xs.device).repeat(w).repeat_interleave(recv)
        perm = expert_of_row.argsort(stable=True)
        out = experts(received[perm], recv.view(w, el).sum(0))
        back = torch.empty_like(out).index_copy_(0, perm, out)
        ys = _AllToAll.apply(back, send_splits, recv_splits, self.group)
        return torch.cat((ys, ys.new_zeros(xs.shape[0] - n_sent, ys.shape[1])))  # dropped rows


class MoE(nn.Module):
    """Mixture-of-experts feed-forward layer; ``forward`` returns (output, weighted aux loss)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_experts, self.top_k = config.n_experts, config.top_k
        self.capacity_factor = config.capacity_factor
        self.aux_coef, self.z_coef = config.aux_loss_coef, config.z_loss_coef
        self.router = Router(config)
        self.experts = GroupedExperts(config)
        self.ep: AllToAllDispatch | None = None  # set by parallelize.apply_expert_parallel

    def capacity(self, n_tokens: int) -> int | None:
        """Per-expert capacity ceil(cf * N * k / E) (Fedus et al. 2021), None when dropless."""
        if self.capacity_factor is None:
            return None
        return math.ceil(self.capacity_factor * n_tokens * self.top_k / self.n_experts)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Apply the experts to ``x`` (..., D)."""
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        n, k, e = x.shape[0], self.top_k, self.n_experts
        r = self.router(x)
        counts = expert_counts(r.indices, e)  # this rank's assignments per expert
        # balance statistics over the whole expert-parallel group
        routed = counts if self.ep is None else self.ep.global_counts(counts)
        aux = self.aux_coef * load_balancing_loss(r.probs, routed) + self.z_coef * router_z_loss(r.logits)

        flat = r.indices.reshape(-1)
        cap = self.capacity(n)
        if cap is not None:  # overflow goes to virtual expert e: sorted last, never computed
            flat = torch.where(capacity_keep(r.indices, e, cap).reshape(-1), flat, e)
            counts = expert_counts(flat, e)
        # sorted row p holds assignment order[p]; keys of one byte (experts 0..e) take one
        # radix-sort pass on CUDA, int64 keys eight
        order = (flat.to(torch.uint8) if e <= 255 else flat).argsort(stable=True)
        where = inverse_permutation(order)  # assignment a sits in sorted row where[a]
        xs = gather_rows(x, order, where, k)  # xs[p] = x[order[p] // k]
        if self.ep is None:
            ys = self.experts(xs, counts, all_rows=cap is None)
        else:
            ys = self.ep.run(self.experts, xs, counts)
        unsorted = gather_rows(ys, where, order).view(n, k, -1)  # un-permute
        out = (unsorted * r.weights.unsqueeze(-1).to(unsorted.dtype)).sum(dim=1)
        return out.to(x.dtype).view(shape), aux


def moe_layers(model: nn.Module) -> list[MoE]:
    """All MoE layers of ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, MoE)]


@torch.no_grad()
def update_expert_bias(model: nn.Module, group: dist.ProcessGroup | None = None) -> None:
    """Apply the aux-loss-free bias update after an optimiser step and reset the counts.

    b_i += u * sign(mean_load - load_i) (Wang et al. 2024, DeepSeek-V3 section 2.1.2):
    overloaded experts become less attractive, under-used ones more. Pass the process
    group spanning all data-parallel ranks so every rank applies the same update.
    """
    for moe in moe_layers(model):
        router = moe.router
        if not router.bias_balancing:
            continue
        load = router.tokens_per_expert.clone()
        if group is not None:
            dist.all_reduce(load, group=group)
        router.expert_bias += router.bias_update_rate * torch.sign(load.mean() - load)
        router.tokens_per_expert.zero_()
