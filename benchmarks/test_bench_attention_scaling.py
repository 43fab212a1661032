"""The scaling claim in one table: window attention (8x8 windows) vs full attention at equal
token count and width, for token maps 16x16 -> 128x128, forward and forward+backward.

* ``window-reference`` / ``window-triton``: ``xswin_fast.ops.window_attention`` (no shift, no
  bias, dot-product: the attention mechanism alone) with the torch and Triton backends;
* ``full-sdpa``: ``scaled_dot_product_attention`` over all tokens of the map, the DiT path
  (q, k, v strided views of one projection, heads moved to dim 1 by a view), flash backend on
  a GPU.

Width 384 with 6 heads of 64 (DiT-S). Every map runs the same number of tokens per call (batch
= TOKENS / map size), so full attention's cost per call grows with the map and window
attention's stays flat. FLOPs: 4*N*C per token forward, N = 64 for windows and N = H*W for full
attention; backward 2.5x. Minimal bytes: q, k, v read and o written once (forward), plus q, k,
v, dO read and dq, dk, dv written once (backward).
"""
import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import benchutils as bu
from xswin_fast import ops

MAPS = (16, 32, 64, 128)
WIDTH, HEADS, WINDOW = 384, 6, 8
TOKENS = {"cuda": 65536, "cpu": 1024}  # tokens per call (batch * H * W)
CPU_MAPS = (16, 32)  # the quick CPU run
IMPLS = ("window-reference", "window-triton", "full-sdpa")


def full_attention(q, k, v):
    """The DiT path: (B, H, W, heads, d) views -> (B, heads, L, d) -> SDPA -> (B, H, W, C)."""
    B, H, W, nh, d = q.shape
    q, k, v = (t.reshape(B, H * W, nh, d).transpose(1, 2) for t in (q, k, v))
    o = F.scaled_dot_product_attention(q, k, v)
    return o.transpose(1, 2).reshape(B, H, W, nh * d)


def make_fn(impl, env):
    if impl == "full-sdpa":
        if env.on_gpu:

            def fn(q, k, v):
                with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                    return full_attention(q, k, v)

            return fn
        return full_attention
    backend = "torch" if impl == "window-reference" else "triton"
    return lambda q, k, v: ops.window_attention(q, k, v, (WINDOW, WINDOW), backend=backend)


def full_reference_slice(q, k, v, rows: int = 256):
    """fp32 full attention of sample 0, head 0, the first ``rows`` queries (a cheap check)."""
    B, H, W, nh, d = q.shape
    qs = q[0].reshape(H * W, nh, d)[:rows, 0].float()
    ks, vs = (t[0].reshape(H * W, nh, d)[:, 0].float() for t in (k, v))
    p = torch.softmax(qs @ ks.T * d**-0.5, dim=-1)
    return p @ vs


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("size", MAPS)
@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
def test_attention_scaling(benchmark, bench_env, mode, size, impl):
    env = bench_env
    if impl == "window-triton":
        reason = bu.triton_skip_reason(env)
    elif not env.on_gpu and not env.cpu_full and size not in CPU_MAPS:
        reason = bu.SKIP_CPU_LARGE
    else:
        reason = None
    if reason:
        pytest.skip(reason)
    benchmark.group = f"attn-scaling-{mode}"

    L = size * size
    B = max(TOKENS[env.kind] // L, 1)
    d = WIDTH // HEADS
    elt = torch.finfo(env.dtype).bits // 8
    rg = mode == "fwdbwd"
    n_sets = bu.rotation_count(env, 4 * B * L * WIDTH * elt * (2 if rg else 1))
    arg_sets = []
    for _ in range(n_sets):
        qkv = bu.randn((B, size, size, 3, HEADS, d), env, requires_grad=rg)
        go = bu.randn((B, size, size, WIDTH), env) if rg else None
        arg_sets.append((qkv, go))

    fn = make_fn(impl, env)

    def step(qkv, go):
        q, k, v = qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]
        if not rg:
            with torch.no_grad():
                return fn(q, k, v)
        out = fn(q, k, v)
        return out, torch.autograd.grad(out, [qkv], go)

    # correctness first
    tol = bu.KERNEL_TOL[env.dtype]
    qkv0, go0 = arg_sets[0]
    got = step(qkv0, go0)
    out = got if not rg else got[0]
    q32 = qkv0.detach().float().requires_grad_(rg)
    q, k, v = q32[:, :, :, 0], q32[:, :, :, 1], q32[:, :, :, 2]
    if impl == "full-sdpa":
        rows = min(256, L)
        err = bu.check_close(f"full attention {size}x{size}", out[0].reshape(L, HEADS, d)[:rows, 0], full_reference_slice(q, k, v, rows), tol)
        if rg and L <= 4096:  # gradients of one sample against the math backend in fp32 (its
            # L x L scores grow quadratically: past 64x64 only the forward slice is checked)
            with sdpa_kernel([SDPBackend.MATH]):
                ref = full_attention(q[:1], k[:1], v[:1])
            g_ref = torch.autograd.grad(ref, [q32], go0[:1].float())[0][:1]
            err = max(err, bu.check_close("full attention grads", got[1][0][:1], g_ref, tol))
        elif rg and not torch.isfinite(got[1][0]).all():
            raise AssertionError("full attention: non-finite gradients")
    else:
        from xswin_fast.ops import reference

        ref = reference.window_attention(q, k, v, (WINDOW, WINDOW))
        exp = ref.detach() if not rg else (ref.detach(), torch.autograd.grad(ref, [q32], go0.float()))
        err = bu.check_close(f"{impl} {size}x{size}", got, exp, tol)

    median = bu.run_benchmark(benchmark, env, step, arg_sets, rounds=bu.KERNEL_ROUNDS)

    N = L if impl == "full-sdpa" else WINDOW * WINDOW
    fwd_flops = 4.0 * B * L * N * WIDTH
    x_bytes = B * L * WIDTH * elt
    nbytes, flops = (4 * x_bytes, fwd_flops) if mode == "fwd" else (11 * x_bytes, 3.5 * fwd_flops)
    bu.record(
        benchmark, env, median, bytes_=nbytes, flops=flops,
        op="attention", mode=mode, case=f"{size}x{size}", impl=impl, dtype=bu.dtype_name(env.dtype),
        map=size, tokens_per_image=L, batch=B, shape=dict(B=B, H=size, W=size, C=WIDTH, heads=HEADS, head_dim=d),
        window=WINDOW if impl != "full-sdpa" else None,
        sdpa_backend=("flash" if env.on_gpu else "default") if impl == "full-sdpa" else None,
        input_sets=n_sets, check_err=err,
    )
