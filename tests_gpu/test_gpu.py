"""The CUDA paths against float64 on the CPU: SDPA (cuDNN / Flash), flex_attention (window,
sinks, ALiBi, GQA, a partial last block), torch._grouped_mm experts (uneven and empty groups,
dropped rows), the fused cross-entropy (its in-place Triton kernel too), the Triton RoPE
kernels, the bf16 router, and inductor on the whole model.

These live outside tests/ because CI has no GPU: `make test` never collects them, and
`make test-gpu` (on a GPU machine) fails at once, rather than skipping, where there is none.
The reference is this library's CPU path in float64 (explicit-mask SDPA, the expert loop),
which the CPU tests check against the independent reference in reference.py. Errors are
relative norms ||got - want|| / ||want||. Kernel-level tests run in float32 where the kernel
allows it (Triton's float32 dot is tf32, ~3e-4) or bf16 (1e-3 .. 1e-2 per op, METHOD.md), so
a mask off by one key (a window of 8: ~10%) stands far above the tolerance. Whole-model bf16
steps get a looser bound: measured on an H100 the gradients of a two-block model land at 3-5%
from float64, the same for every parameter (bf16 rounding compounding, not one kernel).
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from rayfleet.model import ModelConfig, Transformer, linear_cross_entropy
from rayfleet.model.attention import Attention, attention_context
from rayfleet.model.masks import MaskSpec
from rayfleet.model.moe import MoE
from rayfleet.model.positions import Positions

BASE = ModelConfig(vocab_size=512, dim=256, n_layers=2, n_heads=4, max_seq_len=512, mlp_hidden=512,
                   init_std=0.1)  # head_dim 64, as in the presets
T = 200  # not a multiple of flex_attention's 128-token blocks: the last block is partial
ATTENTION = {
    "causal-rope": {},
    "window8": {"window": 8},
    "window48-sinks4": {"window": 48, "sinks": 4},
    "alibi": {"positions": "alibi"},
    "alibi-window8-sinks2-gqa": {"positions": "alibi", "window": 8, "sinks": 2, "n_kv_heads": 2},
}
# top_k = n_experts: every token uses every expert, so routing has no discrete choice that bf16
# rounding could flip (a flipped top-2 choice moves a token's gradient by O(1)); the MoE
# layer tests below cover top-2 routing, uneven groups and drops with identical inputs.
MODELS = {**{k: v for k, v in ATTENTION.items() if k in ("causal-rope", "window48-sinks4", "alibi")},
          "moe-all-experts": {"n_experts": 4, "top_k": 4, "expert_hidden": 128}}


def leaf(t: torch.Tensor, device: str, dtype: torch.dtype) -> torch.Tensor:
    """A fresh leaf copy that collects its own gradient."""
    return t.detach().to(device, dtype).clone().requires_grad_()


def rel(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    return float((got - want).norm() / want.norm().clamp_min(1e-30))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-3), (torch.bfloat16, 1.5e-2)])
@pytest.mark.parametrize("name", list(ATTENTION))
def test_attention_kernel_equals_float64(name: str, dtype: torch.dtype, tol: float) -> None:
    """Attention.attend on CUDA (SDPA is_causal or flex_attention) vs explicit-mask SDPA in float64."""
    config = dataclasses.replace(BASE, **ATTENTION[name])
    attention = Attention(config)
    outs = []
    torch.manual_seed(0)
    q = torch.randn(2, config.n_heads, T, config.head_dim, dtype=torch.float64)
    k, v = (torch.randn(2, config.kv_heads, T, config.head_dim, dtype=torch.float64) for _ in range(2))
    g = torch.randn_like(q)
    for device, dt in (("cpu", torch.float64), ("cuda", dtype)):
        positions = Positions(config).to(device)
        ctx = attention_context(config, positions, torch.arange(T, device=device),
                                MaskSpec(config.window, config.sinks), dt)
        if device == "cuda":
            assert ctx.kernel == ("causal" if name == "causal-rope" else "flex")
        qi, ki, vi = (leaf(t, device, dt) for t in (q, k, v))
        out = attention.to(device).attend(qi, ki, vi, ctx)
        out.backward(g.to(device, dt))
        outs.append((out, qi.grad, ki.grad, vi.grad))
    for want, got in zip(*outs):
        assert torch.isfinite(got).all() and rel(got, want) < tol, (rel(got, want), tol)


def make_moe(**overrides: object) -> MoE:
    torch.manual_seed(0)
    model = Transformer(dataclasses.replace(BASE, n_experts=8, top_k=2, expert_hidden=128, init_std=0.05,
                                            **overrides))
    moe = model.layers[0].ffn
    assert isinstance(moe, MoE)
    return moe


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16"])
@pytest.mark.parametrize("capacity", [None, 1.0])
def test_moe_layer_equals_float64(precision: str, capacity: float | None) -> None:
    """Router, permutation, grouped GEMM, combine and aux losses on CUDA; the router runs in
    float32 on the same input values as the float64 reference, so top-2 choices agree."""
    moe = make_moe(capacity_factor=capacity)
    x = torch.randn(3, 150, BASE.dim)
    if precision == "bf16":  # the reference gets exactly the values a bf16 model holds
        x = x.bfloat16().float()
        moe.to(torch.bfloat16).float()
    g = torch.randn(3, 150, BASE.dim)
    results = []
    for device in ("cpu", "cuda"):
        layer = copy.deepcopy(moe).to(device)
        dtype = torch.float64 if device == "cpu" else torch.bfloat16 if precision == "bf16" else torch.float32
        layer.to(dtype)
        xi = leaf(x, device, dtype)
        with torch.autocast("cuda", torch.bfloat16, enabled=device == "cuda" and precision == "bf16-mixed"):
            out, aux = layer(xi)
        (out * g.to(device, out.dtype)).sum().add(aux).backward()
        results.append((out, aux, xi.grad, layer.router.gate.weight.grad,
                        layer.experts.w13.grad, layer.experts.w2.grad))
    for name, want, got in zip(("out", "aux", "x", "gate", "w13", "w2"), *results):
        assert torch.isfinite(got).all() and rel(got, want) < 2e-2, (name, rel(got, want))


def test_grouped_experts_equal_loop_with_uneven_and_empty_groups() -> None:
    """Group sizes that are not multiples of 8 or 16 rows, experts with no rows, dropped rows."""
    from rayfleet.model.moe import GroupedExperts

    cfg = dataclasses.replace(BASE, n_experts=8, expert_hidden=128)
    experts = GroupedExperts(cfg).cuda()
    for w in (experts.w13, experts.w2):
        torch.nn.init.normal_(w, std=0.05)
    counts = torch.tensor([5, 0, 17, 1, 0, 33, 2, 9], device="cuda")
    n = int(counts.sum()) + 7  # 7 dropped rows past the last group
    x = torch.randn(n, cfg.dim, device="cuda")
    g = torch.randn(n, cfg.dim, device="cuda")
    results = []
    for backend, dtype in (("loop", torch.float64), ("grouped_mm", torch.bfloat16)):
        experts.backend = backend
        ex = copy.deepcopy(experts).to(dtype)
        xi = leaf(x, "cuda", dtype)
        out = ex(xi, counts)
        out.backward(g.to(dtype))
        results.append((out, xi.grad, ex.w13.grad, ex.w2.grad))
    for want, got in zip(*results):
        assert torch.isfinite(got).all() and rel(got, want) < 1e-2
    assert results[1][0][-7:].abs().max() == 0 and results[1][1][-7:].abs().max() == 0


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("chunk", [64, 4096])  # several chunks (float32 accumulation), one chunk
def test_fused_cross_entropy_equals_float64(dtype: torch.dtype, tol: float, chunk: int) -> None:
    """The chunk loop on CUDA, vocabulary 50304: the in-place Triton kernel for bf16 and float32,
    the compiled PyTorch step for float64 (the kernel's float32 arithmetic would miss 1e-10)."""
    torch.manual_seed(0)
    h = torch.randn(300, 64, dtype=torch.float64)
    w = torch.randn(50304, 64, dtype=torch.float64) * 0.1
    targets = torch.randint(0, 50304, (300,))
    targets[::7] = -100
    results = []
    for device, dt in (("cpu", torch.float64), ("cuda", dtype)):
        hi, wi = leaf(h, device, dt), leaf(w, device, dt)
        loss = linear_cross_entropy(hi, wi, targets.to(device), chunk)
        (2.0 * loss).backward()
        results.append((loss, hi.grad, wi.grad))
    for want, got in zip(*results):
        assert torch.isfinite(got).all() and rel(got, want) < tol, (rel(got, want), tol)


@pytest.mark.parametrize("compiled", [False, True])
def test_bf16_router_logits_are_float32_products_of_the_bf16_values(compiled: bool) -> None:
    """With bf16 weights the router takes a bf16 GEMM with float32 output: the logits must be the
    float64 products of the same bf16 numbers to float32 accuracy, not bf16-rounded; and the
    gradients reach x and the gate weight."""
    from rayfleet.model.moe import Router

    torch.manual_seed(0)
    cfg = dataclasses.replace(BASE, n_experts=8, top_k=2, expert_hidden=128)
    router = Router(cfg).cuda().to(torch.bfloat16)
    x = torch.randn(1000, BASE.dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    run = torch.compile(router, fullgraph=True) if compiled else router
    out = run(x)
    assert out.logits.dtype == torch.float32
    want = x.detach().double() @ router.gate.weight.detach().double().t()
    assert rel(out.logits, want) < 1e-6
    out.logits.square().sum().backward()
    gx = 2 * want @ router.gate.weight.detach().double()
    assert rel(x.grad, gx) < 1e-2 and router.gate.weight.grad is not None


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 8e-3)])
@pytest.mark.parametrize("vocab", [50304, 4096 * 3 + 1])  # the presets' vocabulary; one past a block
def test_triton_softmax_grad_equals_float64(dtype: torch.dtype, tol: float, vocab: int) -> None:
    """The in-place kernel: per-row loss and (softmax - onehot) * scale, ignored rows all zero,
    targets on the first and last column, and a row stride wider than the vocabulary."""
    from rayfleet.model.kernels import cross_entropy as ce_kernel

    assert ce_kernel.AVAILABLE, "Triton is on every GPU machine here: the kernel must be in use"
    torch.manual_seed(0)
    n = 257
    x = (torch.randn(n, vocab + 8) * 4).to(dtype).double()  # the reference sees the same inputs
    targets = torch.randint(0, vocab, (n,))
    targets[0], targets[1], targets[::5] = 0, vocab - 1, -100
    ref = x[:, :vocab].clone().requires_grad_()
    ref_loss = torch.nn.functional.cross_entropy(ref, targets, reduction="none", ignore_index=-100)
    (0.5 * ref_loss.sum()).backward()
    got = x.to("cuda", dtype)
    view = got[:, :vocab]  # row stride vocab + 8
    poison = got[:, vocab:].clone()
    loss = ce_kernel.softmax_grad_(view, targets.cuda(), torch.tensor(0.5, device="cuda"))
    assert rel(loss, ref_loss) < 1e-6
    assert rel(view, ref.grad) < tol, rel(view, ref.grad)
    assert view[::5].abs().max() == 0 and loss[::5].abs().max() == 0
    assert torch.equal(got[:, vocab:], poison)  # nothing written past the vocabulary


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 8e-3)])
@pytest.mark.parametrize("n_q,n_k,d", [(4, 2, 64), (3, 3, 16)])
def test_triton_rope_equals_float64(dtype: torch.dtype, tol: float, n_q: int, n_k: int, d: int) -> None:
    """The RoPE kernels on a qkv projection (GQA too), T = 200 (not a multiple of the kernel's
    token block), positions from 37 (decoding's offset), against positions.apply_rope in float64:
    rotated q and k, v a view of qkv, and the qkv gradient from q/k/v gradients in the
    attention kernels' (B, H, T, d) layout (strided as (B, T, H, d) views)."""
    from rayfleet.model.kernels import rope as rope_kernel
    from rayfleet.model.positions import apply_rope, rope_angles, rope_inv_freq

    assert rope_kernel.AVAILABLE, "Triton is on every GPU machine here: the kernel must be in use"
    torch.manual_seed(0)
    b, t = 3, T
    x = torch.randn(b, t, n_q + 2 * n_k, d).to(dtype).double()
    cos, sin = rope_angles(torch.arange(37, 37 + t), rope_inv_freq(d, 10000.0))
    grads = [torch.randn(b, n, t, d).to(dtype).double() for n in (n_q, n_k, n_k)]  # (B, H, T, d)
    ref = x.clone().requires_grad_()
    c, s = cos[:, None], sin[:, None]
    want = (apply_rope(ref[:, :, :n_q], c, s), apply_rope(ref[:, :, n_q:n_q + n_k], c, s), ref[:, :, n_q + n_k:])
    sum((w * g.transpose(1, 2)).sum() for w, g in zip(want, grads)).backward()

    qkv = x.to("cuda", dtype).requires_grad_()
    assert rope_kernel.handles(qkv)
    got = rope_kernel.rope_qkv(qkv, cos.cuda(), sin.cuda(), n_q, n_k)
    assert got[2].data_ptr() == qkv[:, :, n_q + n_k:].data_ptr()  # v: a view, no copy
    for g, w in zip(got, want):
        assert g.shape == w.shape and rel(g, w) < tol, rel(g, w)
    torch.autograd.backward(got, [g.to("cuda", dtype).transpose(1, 2) for g in grads])
    assert rel(qkv.grad, ref.grad) < tol, rel(qkv.grad, ref.grad)


def step(model: Transformer, tokens: torch.Tensor, precision: str, compiled: bool = False
         ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss (LM + aux) and parameter gradients of one forward/backward."""
    model.zero_grad(set_to_none=True)
    run = torch.compile(model, fullgraph=True) if compiled else model
    tokens = tokens.to(next(model.parameters()).device)
    with torch.autocast("cuda", torch.bfloat16, enabled=precision == "bf16-mixed"):
        out = run(tokens[:, :-1], tokens[:, 1:])
        loss = out.loss + out.aux_loss
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16"])
@pytest.mark.parametrize("name", list(MODELS))
def test_cuda_step_equals_float64_reference(name: str, precision: str) -> None:
    torch.manual_seed(0)
    model = Transformer(dataclasses.replace(BASE, **MODELS[name]))
    tokens = torch.randint(0, BASE.vocab_size, (2, T + 1))
    want_loss, want_grads = step(copy.deepcopy(model).double(), tokens, "fp32")
    gpu = model.cuda()
    if precision == "bf16":
        gpu.to(torch.bfloat16)
    loss, grads = step(gpu, tokens, precision)
    assert torch.isfinite(loss) and rel(loss, want_loss) < 1e-2, (loss, want_loss)
    assert grads.keys() == want_grads.keys()
    errors = {key: rel(grads[key], want_grads[key]) for key in grads}
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert max(errors.values()) < 8e-2, sorted(errors.items(), key=lambda kv: -kv[1])[:3]


@pytest.mark.parametrize("name", ["causal-rope", "alibi-window8-sinks2-gqa", "moe-all-experts"])
def test_inductor_compiled_step_equals_eager(name: str) -> None:
    """fullgraph=True: no graph break in forward or backward on the CUDA kernels."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    overrides = {**ATTENTION, **MODELS}[name]
    model = Transformer(dataclasses.replace(BASE, **overrides)).cuda().to(torch.bfloat16)
    tokens = torch.randint(0, BASE.vocab_size, (2, T + 1))
    eager_loss, eager_grads = step(model, tokens, "bf16")
    eager_grads = {k: v.clone() for k, v in eager_grads.items()}
    loss, grads = step(model, tokens, "bf16", compiled=True)
    assert rel(loss, eager_loss) < 1e-2
    errors = {key: rel(grads[key], eager_grads[key]) for key in grads}
    assert max(errors.values()) < 3e-2, sorted(errors.items(), key=lambda kv: -kv[1])[:3]
