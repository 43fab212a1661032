"""adaLN modulation forms, forward and forward+backward: Triton vs eager vs torch.compile.

* ``eager``: ``xswin_fast.ops.<op>(backend="torch")``, the PyTorch reference the models run on CPU;
* ``compile``: ``torch.compile`` of the reference expression (Inductor fuses it into one or two
  kernels: this is the baseline a hand kernel has to beat, docs/design.md §5);
* ``triton``: ``xswin_fast.ops.<op>(backend="triton")``.

Inputs mirror the models: x, y (B, H, W, C) token maps of the stage shapes, and shift, scale,
gate strided slices of one (B, k*C) adaLN projection output.

Minimal bytes: the token tensors read once and the output written once, plus the small
per-sample (B, C) and per-channel (C,) tensors. Backward: dout and the token inputs the
gradient needs read once, one gradient per token input written once (a gradient that is dout
itself, as dx of a residual, is not a copy and is not counted). FLOPs are nominal per element
(modulate 2, LayerNorm 5, affine 2, gate 2, residual 1; backward 2x): these ops are pure
bandwidth, GB/s against the copy bandwidth is the number that matters.
"""
import pytest
import torch

import benchutils as bu
from xswin_fast import ops, traffic
from xswin_fast.op_calls import OpCall
from xswin_fast.ops import reference

# stage token maps (B on GPU, B on CPU, H, W, C): the paper preset's, Swin-B-like and XSwin-S/2 stages
SHAPES = {
    "paper-s1": ((256, 8), 8, 8, 192),
    "paper-s2": ((256, 8), 4, 4, 384),
    "swinb-s1": ((64, 1), 64, 64, 128),
    "swinb-s2": ((64, 2), 32, 32, 256),
    "xswin-s2-s1": ((64, 1), 16, 16, 192),  # XSwin-S/2 at 256 px, stage 1
}

# op: (per-sample vectors, token inputs, fwd token-tensor traffic, bwd token-tensor traffic,
#      nominal fwd FLOPs per element, has affine (C,) weight/bias)
OPS = {
    "modulate": (2, 1, 2, 3, 2, False),  # bwd: read dout, x; write dx
    "layernorm_modulate": (2, 1, 2, 3, 7, False),  # bwd: read dout, x; write dx
    "gated_residual": (1, 2, 3, 3, 2, False),  # bwd: read dout, y; write dy (dx is dout)
    "modulate_layernorm": (2, 1, 2, 3, 9, True),  # bwd: read dout, x; write dx
    "residual_layernorm": (0, 2, 3, 3, 9, True),  # bwd: read dout, y; write dy (dx is dout)
}
IMPLS = ("eager", "compile", "triton")


def make_inputs(env, op, B, H, W, C, requires_grad):
    """Leaves (what gradients are taken for) and the op's positional arguments built from them."""
    n_vec, n_tok, _, _, _, affine = OPS[op]
    rg = requires_grad
    x = bu.randn((B, H, W, C), env, requires_grad=rg)
    leaves = [x]
    y = None
    if n_tok == 2:
        y = bu.randn((B, H, W, C), env, requires_grad=rg)
        leaves.append(y)
    vecs = []
    if n_vec:
        proj = bu.randn((B, n_vec * C), env, scale=0.5, requires_grad=rg)  # one adaLN projection output
        leaves.append(proj)
        vecs = list(proj.chunk(n_vec, dim=1))
    weight = bias = None
    if affine:
        weight = (1 + 0.1 * torch.randn(C, device=env.device)).to(env.dtype).requires_grad_(rg)
        bias = bu.randn((C,), env, scale=0.1, requires_grad=rg)
        leaves += [weight, bias]
    if op in ("modulate", "layernorm_modulate"):
        args = (x, vecs[0], vecs[1])
    elif op == "gated_residual":
        args = (x, y, vecs[0])
    elif op == "modulate_layernorm":
        args = (x, vecs[0], vecs[1], weight, bias)
    else:  # residual_layernorm: in training a per-sample stochastic-depth multiplier
        keep = None
        if requires_grad:
            keep = (torch.rand(B, device=env.device) > 0.1).to(env.dtype) / 0.9
        args = (x, y, weight, bias, keep)
    return leaves, args


def make_fn(impl, op):
    if impl == "eager":
        f = getattr(ops, op)
        return lambda *a: f(*a, backend="torch")
    if impl == "triton":
        f = getattr(ops, op)
        return lambda *a: f(*a, backend="triton")
    return torch.compile(getattr(reference, op), dynamic=False)


def make_step(fn, mode):
    if mode == "fwd":

        def step(leaves, args, go):
            with torch.no_grad():
                return fn(*args)

        return step

    def step(leaves, args, go):
        out = fn(*args)
        return out, torch.autograd.grad(out, leaves, go)

    return step


def expected(op, leaves, args, go, mode):
    """fp32 reference on upcast copies of the same inputs (views rebuilt on the upcast leaves)."""
    up = {id(t): t.detach().float().requires_grad_(mode != "fwd") for t in leaves}
    n_vec = OPS[op][0]
    proj = next((t for t in leaves if t.dim() == 2), None)
    chunks = list(up[id(proj)].chunk(n_vec, dim=1)) if proj is not None else []

    def conv(a):
        if a is None:
            return None
        if id(a) in up:
            return up[id(a)]
        if a.dim() == 2:  # a chunk of the projection
            return chunks.pop(0)
        return a.float()  # keep

    args32 = [conv(a) for a in args]
    out = getattr(reference, op)(*args32)
    if mode == "fwd":
        return out.detach()
    leaves32 = [up[id(t)] for t in leaves]
    return out.detach(), torch.autograd.grad(out, leaves32, go.float())


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("op", list(OPS))
def test_adaln(benchmark, bench_env, op, mode, shape, impl):
    env = bench_env
    reason = bu.triton_skip_reason(env) if impl == "triton" else bu.compile_skip_reason(env) if impl == "compile" else None
    if reason:
        pytest.skip(reason)
    benchmark.group = f"adaln-{op}-{mode}"

    Bs, H, W, C = SHAPES[shape]
    B = Bs[0] if env.on_gpu else Bs[1]
    n_vec, n_tok, fwd_tok, bwd_tok, flops_per_elt, affine = OPS[op]
    elt = torch.finfo(env.dtype).bits // 8
    numel = B * H * W * C
    n_sets = bu.rotation_count(env, (fwd_tok + (bwd_tok if mode == "fwdbwd" else 0)) * numel * elt)
    arg_sets = []
    for _ in range(n_sets):
        leaves, args = make_inputs(env, op, B, H, W, C, requires_grad=mode == "fwdbwd")
        go = bu.randn((B, H, W, C), env) if mode == "fwdbwd" else None
        arg_sets.append((leaves, args, go))

    step = make_step(make_fn(impl, op), mode)
    err = bu.check_close(f"{impl} {op} {mode} {shape}", step(*arg_sets[0]), expected(op, *arg_sets[0], mode), bu.KERNEL_TOL[env.dtype])

    median = bu.run_benchmark(benchmark, env, step, arg_sets, rounds=bu.KERNEL_ROUNDS)

    small = (n_vec * B * C + (2 * C if affine else 0) + (B if op == "residual_layernorm" and mode == "fwdbwd" else 0)) * elt
    if mode == "fwd":
        nbytes, flops = fwd_tok * numel * elt + small, flops_per_elt * numel
    else:  # small tensors read in both passes, their gradients written once
        nbytes, flops = (fwd_tok + bwd_tok) * numel * elt + 3 * small, 3 * flops_per_elt * numel
    # the traffic model's bound (xswin_fast.traffic): reference bytes over a fused kernel's
    _, args, go = arg_sets[0]
    call = OpCall.of(op, args, {}, grad=go)
    kernel, ref = traffic.kernel_traffic(call), traffic.reference_traffic(call)
    bu.record(
        benchmark, env, median, bytes_=nbytes, flops=flops,
        op=op, mode=mode, case=shape, impl=impl, dtype=bu.dtype_name(env.dtype),
        shape=dict(B=B, H=H, W=W, C=C), input_sets=n_sets, check_err=err,
        ideal_speedup=round((ref.fwd + ref.bwd) / (kernel.fwd + kernel.bwd), 2),
    )
