"""Window self- and cross-attention, forward and forward+backward, four implementations:

* ``reference``: ``xswin_fast.ops.window_attention(backend="torch")`` - roll, pad, partition,
  one SDPA call with the bias + region mask materialised as an additive mask, reverse, roll back;
* ``compile``: ``torch.compile`` of that reference function on its SDPA path (``finite=True``);
* ``flex``: FlexAttention - the same roll/partition (materialised: FlexAttention cannot remap
  the rows it loads, so those copies are part of its path and of its time), the relative-position
  bias through a ``score_mod`` that indexes the (heads, N, N) bias with the score's
  (head, query, key) indices, Swin's shift-region mask through a ``mask_mod`` (a ``BlockMask``
  built once per shape, as a module would cache it), the whole path under ``torch.compile``;
* ``triton``: ``xswin_fast.ops.window_attention(backend="triton")``, the fused kernel.

Self-attention is the SwinV2 form the XSwin blocks run: shifted windows, cosine attention with a
per-head logit scale, additive (heads, N, N) bias, q/k/v strided views of one qkv projection.
Cross-attention is the XSwin skip form: no shift, dot-product, no bias, q from one map and k, v
views of one kv projection of another.

Minimal bytes (``xswin_fast.traffic.kernel_traffic``): q, k, v read once and o written once
(4 x B*H*W*C elements), plus the bias; forward+backward adds q, k, v and dO read once and dq, dk,
dv written once (7 x), plus the bias and its gradient. ``ideal_speedup`` is the reference path's
bytes (``xswin_fast.traffic.reference_traffic``) over those. FLOPs: 4*N*C per token forward (QK^T and PV over the padded map, masked pairs
counted as in dense attention); the backward counts 2.5x the forward (FlashAttention's
convention); normalisation and softmax are not counted.
"""
import functools
import math

import pytest
import torch
import torch.nn.functional as F

import benchutils as bu
from xswin_fast import ops, traffic
from xswin_fast.op_calls import OpCall
from xswin_fast.ops import reference

# name: B on GPU, B on CPU, map H x W, width C, heads, window, shift of the self-attention
CASES = {
    "paper-s1": dict(B=(256, 8), H=8, W=8, C=192, heads=6, window=2, shift=1),  # XSwin-paper stage 1
    "paper-s2": dict(B=(256, 8), H=4, W=4, C=384, heads=12, window=2, shift=1),  # XSwin-paper stage 2
    "swinb-s1": dict(B=(64, 1), H=64, W=64, C=128, heads=4, window=8, shift=4),  # Swin-B-like stage 1
    "swinb-s2": dict(B=(64, 2), H=32, W=32, C=256, heads=8, window=8, shift=4),  # Swin-B-like stage 2
    # XSwin-S/2 and XSwin-B/2 at 256 px (latent 32): 16x16 and 8x8 token maps, batch 64
    "xswin-s2-s1": dict(B=(64, 1), H=16, W=16, C=192, heads=6, window=8, shift=4),
    "xswin-s2-s2": dict(B=(64, 2), H=8, W=8, C=384, heads=12, window=8, shift=0),
    "xswin-b2-s1": dict(B=(64, 1), H=16, W=16, C=384, heads=6, window=8, shift=4),
    "xswin-b2-s2": dict(B=(64, 2), H=8, W=8, C=768, heads=12, window=8, shift=0),
}
IMPLS = ("reference", "compile", "flex", "triton")


# FlexAttention path


def _partition(x, window, shift, packed):
    """(B, H, W, nh, d) -> windows: (B, nW*nh, N, d) one window per (window, head) "head", or
    packed (B, nh, nW*N, d) one window-major sequence per image and head."""
    B, H, W, nh, d = x.shape
    x = reference.pad_and_shift(x, window, shift)
    Hp, Wp = x.shape[1], x.shape[2]
    wh, ww = window
    x = x.reshape(B, Hp // wh, wh, Wp // ww, ww, nh, d)
    if packed:
        return x.permute(0, 5, 1, 3, 2, 4, 6).reshape(B, nh, -1, d)
    return x.permute(0, 1, 3, 5, 2, 4, 6).reshape(B, -1, wh * ww, d)


def _unpartition(o, H, W, nh, window, shift, packed):
    B, d = o.shape[0], o.shape[-1]
    (wh, ww), (sh, sw) = window, shift
    Hp, Wp = -(-H // wh) * wh, -(-W // ww) * ww
    if packed:
        o = o.reshape(B, nh, Hp // wh, Wp // ww, wh, ww, d).permute(0, 2, 4, 3, 5, 1, 6)
    else:
        o = o.reshape(B, Hp // wh, Wp // ww, nh, wh, ww, d).permute(0, 1, 4, 2, 5, 3, 6)
    o = o.reshape(B, Hp, Wp, nh, d)
    if sh or sw:
        o = torch.roll(o, shifts=(sh, sw), dims=(1, 2))
    return o[:, :H, :W].reshape(B, H, W, nh * d)


def _flex_packed(N: int) -> bool:
    # 64-token windows fill FlexAttention's tiles one window per sequence; tiny windows (2x2) would
    # pad every 4-token sequence to a whole tile, so they go window-major in one sequence per
    # image with a block-diagonal BlockMask instead (the cheaper of the two layouts for them)
    return N < 64


@functools.lru_cache(maxsize=None)
def flex_block_mask(H, W, nh, window, shift, device):
    """BlockMask of the Swin windows (block-diagonal when packed), shift regions and padding."""
    from torch.nn.attention.flex_attention import create_block_mask

    (wh, ww), (sh, sw) = window, shift
    Hp, Wp = -(-H // wh) * wh, -(-W // ww) * ww
    nWw = Wp // ww
    nW = (Hp // wh) * nWw
    N = wh * ww
    packed = _flex_packed(N)
    needs_mask = (sh, sw) != (0, 0) or (Hp, Wp) != (H, W)
    if not packed and not needs_mask:
        return None

    def region(p, P, w, s):  # Swin's [0, P-w), [P-w, P-s), [P-s, P) -> 0, 1, 2
        if s == 0:
            return p * 0
        return (p >= P - w).to(torch.int32) + (p >= P - s).to(torch.int32)

    def coords(win, pos):  # shifted-frame (row, col) of in-window position pos of window win
        return (win // nWw) * wh + pos // ww, (win % nWw) * ww + pos % ww

    def mask_mod(b, h, q_idx, kv_idx):
        if packed:
            wq, wk, pq, pk = q_idx // N, kv_idx // N, q_idx % N, kv_idx % N
        else:
            wq = wk = h // nh
            pq, pk = q_idx, kv_idx
        rq, cq = coords(wq, pq)
        rk, ck = coords(wk, pk)
        same = (region(rq, Hp, wh, sh) == region(rk, Hp, wh, sh)) & (region(cq, Wp, ww, sw) == region(ck, Wp, ww, sw))
        # padded keys are never attended to; a padded query attends to its region (reference)
        k_real = ((rk + sh) % Hp < H) & ((ck + sw) % Wp < W)
        q_real = ((rq + sh) % Hp < H) & ((cq + sw) % Wp < W)
        allowed = same & (k_real | ~q_real)
        if packed:
            allowed = allowed & (wq == wk)
        return allowed

    if packed:
        return create_block_mask(mask_mod, None, None, nW * N, nW * N, device=device)
    return create_block_mask(mask_mod, None, nW * nh, N, N, device=device)


def flex_window_attention(q, k, v, window, shift, bias, logit_scale, block_mask):
    from torch.nn.attention.flex_attention import flex_attention

    B, H, W, nh, d = q.shape
    N = window[0] * window[1]
    packed = _flex_packed(N)
    if logit_scale is not None:  # cosine attention: as the reference, the temperature goes into q
        temp = torch.clamp(logit_scale, max=reference.LOG_MAX_LOGIT_SCALE).exp().to(q.dtype)
        q = F.normalize(q, dim=-1) * temp.view(1, 1, 1, nh, 1)
        k = F.normalize(k, dim=-1)
        scale = 1.0
    else:
        scale = d**-0.5
    # materialised window-major copies (FlexAttention loads the rows of a sequence in order)
    qw, kw, vw = (_partition(t, window, shift, packed) for t in (q, k, v))
    if q.device.type == "cpu":
        # Inductor's CPU flex template (torch 2.13) fails on inputs that are views of a 7-D
        # buffer ("too many values to unpack"); a pointwise op, fused into the partition copy,
        # makes them plain 4-D buffers. Not needed on CUDA.
        qw, kw, vw = qw * 1.0, kw * 1.0, vw * 1.0
    score_mod = None
    if bias is not None:
        if packed:

            def score_mod(score, b, h, q_idx, kv_idx):
                return score + bias[h, q_idx % N, kv_idx % N]

        else:

            def score_mod(score, b, h, q_idx, kv_idx):
                return score + bias[h % nh, q_idx, kv_idx]

    o = flex_attention(qw, kw, vw, score_mod=score_mod, block_mask=block_mask, scale=scale)
    return _unpartition(o, H, W, nh, window, shift, packed)


# the cases


def make_impl(impl, env, cfg, kind):
    """fn(q, k, v, bias, logit_scale) -> (B, H, W, C) for one implementation."""
    window = (cfg["window"], cfg["window"])
    shift = (cfg["shift"], cfg["shift"]) if kind == "self" else (0, 0)
    if impl in ("reference", "triton"):
        backend = "torch" if impl == "reference" else "triton"
        return lambda q, k, v, b, ls: ops.window_attention(q, k, v, window, shift, bias=b, logit_scale=ls, backend=backend)
    if impl == "compile":
        # finite=True: the SDPA path, as a user would write it; left to look at the values, the
        # reference cannot branch under torch.compile and takes its slower exact path
        compiled = torch.compile(reference.window_attention, dynamic=False)
        return lambda q, k, v, b, ls: compiled(q, k, v, window, shift, b, ls, None, finite=True)
    if impl == "flex":
        compiled = torch.compile(flex_window_attention, dynamic=False)
        mask = flex_block_mask(cfg["H"], cfg["W"], cfg["heads"], window, shift, env.device)
        return lambda q, k, v, b, ls: compiled(q, k, v, window, shift, b, ls, mask)
    raise ValueError(impl)


def make_inputs(env, cfg, kind, B, requires_grad):
    """One input set: (leaf tensors..., bias, logit_scale) and the q, k, v views of them."""
    H, W, C, nh = cfg["H"], cfg["W"], cfg["C"], cfg["heads"]
    d, N = C // nh, cfg["window"] ** 2
    if kind == "self":
        qkv = bu.randn((B, H, W, 3, nh, d), env, requires_grad=requires_grad)
        bias = bu.randn((nh, N, N), env, requires_grad=requires_grad)
        logit_scale = torch.full((nh,), math.log(10.0), device=env.device, dtype=env.dtype).add_(
            0.1 * torch.randn(nh, device=env.device, dtype=env.dtype)
        ).requires_grad_(requires_grad)
        return (qkv,), bias, logit_scale
    x = bu.randn((B, H, W, nh, d), env, requires_grad=requires_grad)
    kv = bu.randn((B, H, W, 2, nh, d), env, requires_grad=requires_grad)
    return (x, kv), None, None


def qkv_views(leaves):
    if len(leaves) == 1:
        qkv = leaves[0]
        return qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]
    x, kv = leaves
    return x, kv[:, :, :, 0], kv[:, :, :, 1]


def make_step(fn, mode):
    """The timed callable on one input set."""
    if mode == "fwd":

        def step(leaves, bias, ls, go):
            with torch.no_grad():
                return fn(*qkv_views(leaves), bias, ls)

        return step

    def step(leaves, bias, ls, go):
        out = fn(*qkv_views(leaves), bias, ls)
        wrt = list(leaves) + [t for t in (bias, ls) if t is not None]
        return out, torch.autograd.grad(out, wrt, go)

    return step


def expected(leaves, bias, ls, go, cfg, kind, mode):
    """The fp32 reference result of one input set."""
    window = (cfg["window"], cfg["window"])
    shift = (cfg["shift"], cfg["shift"]) if kind == "self" else (0, 0)
    up = lambda t: None if t is None else t.detach().float().requires_grad_(mode != "fwd")  # noqa: E731
    leaves32, bias32, ls32 = [up(t) for t in leaves], up(bias), up(ls)
    out = reference.window_attention(*qkv_views(leaves32), window, shift, bias32, ls32)
    if mode == "fwd":
        return out.detach()
    wrt = leaves32 + [t for t in (bias32, ls32) if t is not None]
    return out.detach(), torch.autograd.grad(out, wrt, go.float())


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("kind", ["self", "cross"])
def test_window_attention(benchmark, bench_env, kind, mode, case, impl):
    env, cfg = bench_env, CASES[case]
    if impl == "triton":
        reason = bu.triton_skip_reason(env)
    elif impl in ("compile", "flex"):
        reason = bu.compile_skip_reason(env)
        if reason is None and impl == "flex" and not env.on_gpu and mode == "fwdbwd":
            reason = "FlexAttention has no backward on the CPU (torch raises NotImplementedError)"
    else:
        reason = None
    if reason:
        pytest.skip(reason)
    benchmark.group = f"window-attn-{kind}-{mode}"

    B = cfg["B"][0] if env.on_gpu else cfg["B"][1]
    H, W, C, nh, win = cfg["H"], cfg["W"], cfg["C"], cfg["heads"], cfg["window"]
    N = win * win
    elt = torch.finfo(env.dtype).bits // 8
    tokens = B * H * W
    set_bytes = 4 * tokens * C * elt * (2 if mode == "fwdbwd" else 1)  # q, k, v (+ dO), o (+ grads)
    n_sets = bu.rotation_count(env, set_bytes)
    arg_sets = []
    for _ in range(n_sets):
        leaves, bias, ls = make_inputs(env, cfg, kind, B, requires_grad=mode == "fwdbwd")
        go = bu.randn((B, H, W, C), env) if mode == "fwdbwd" else None
        arg_sets.append((leaves, bias, ls, go))

    step = make_step(make_impl(impl, env, cfg, kind), mode)
    # correctness first: output (and gradients) of the first input set against fp32 reference
    tol = bu.KERNEL_TOL[env.dtype]
    err = bu.check_close(f"{impl} {kind} {mode} {case}", step(*arg_sets[0]), expected(*arg_sets[0], cfg, kind, mode), tol)

    median = bu.run_benchmark(benchmark, env, step, arg_sets, rounds=bu.KERNEL_ROUNDS)

    Hp, Wp = -(-H // win) * win, -(-W // win) * win
    fwd_flops = 4.0 * B * Hp * Wp * N * C
    flops = fwd_flops if mode == "fwd" else 3.5 * fwd_flops
    # bytes from the traffic model (xswin_fast.traffic): the kernel's minimal bytes, and the
    # reference's bytes over them, the ideal speedup of a memory-bound kernel
    leaves, bias, ls, go = arg_sets[0]
    shift = (cfg["shift"],) * 2 if kind == "self" else (0, 0)
    call = OpCall.of("window_attention", (*qkv_views(leaves), (win, win), shift), dict(bias=bias, logit_scale=ls), grad=go)
    kernel, ref = traffic.kernel_traffic(call), traffic.reference_traffic(call)
    nbytes = kernel.fwd + kernel.bwd
    bu.record(
        benchmark, env, median, bytes_=nbytes, flops=flops,
        op="window_attention", kind=kind, mode=mode, case=case, impl=impl, dtype=bu.dtype_name(env.dtype),
        shape=dict(B=B, H=H, W=W, C=C, heads=nh, head_dim=C // nh, window=win, shift=cfg["shift"] if kind == "self" else 0),
        cosine_bias=kind == "self", input_sets=n_sets, check_err=err,
        reference_bytes=ref.fwd + ref.bwd, ideal_speedup=round((ref.fwd + ref.bwd) / nbytes, 2),
    )


# (passes, software-pipelining stages of the tile loop)
BACKWARD_VARIANTS = {"split": ("split", 1), "split-2stages": ("split", 2), "blocked": ("blocked", 1)}


@pytest.mark.parametrize("variant", list(BACKWARD_VARIANTS))
@pytest.mark.parametrize("case", ["xswin-s2-s1", "xswin-b2-s1"])
def test_window_attention_backward_passes(benchmark, bench_env, case, variant):
    """The Triton backward alone (self-attention with bias and logit-scale gradients), through the
    split (two walks over 64-token tiles), the split with the next tile's loads double-buffered
    (two stages: whether prefetch lifts the latency-bound 12.5%-occupancy passes), or the blocked
    split (its smaller tiles, which the mma.sync GPUs take for 16-bit cosine d64): what the blocked
    split costs where it is not needed (sm_90a) and what it gains where it is (docs/gpu_fitness.md)."""
    from xswin_fast.kernels import window_attention as wa

    env, cfg = bench_env, CASES[case]
    reason = bu.triton_skip_reason(env)
    if reason:
        pytest.skip(reason)
    benchmark.group = "window-attn-backward-passes"
    B = cfg["B"][0] if env.on_gpu else cfg["B"][1]
    H, W, C, nh, win, shift = cfg["H"], cfg["W"], cfg["C"], cfg["heads"], cfg["window"], cfg["shift"]
    passes, stages = BACKWARD_VARIANTS[variant]
    chosen = dict(split=wa.SPLIT_BACKWARD, blocked=wa.BLOCKED_BACKWARD)[passes]
    arg_sets = []
    for _ in range(bu.rotation_count(env, 7 * B * H * W * C * torch.finfo(env.dtype).bits // 8)):
        (qkv,), bias, ls = make_inputs(env, cfg, "self", B, requires_grad=False)
        q, k, v = (t.contiguous() for t in qkv_views((qkv,)))
        arg_sets.append((bu.randn((B, H, W, C), env), q, k, v, bias, ls))

    def step(do, q, k, v, bias, ls):
        return wa.window_attention_bwd(do, q, k, v, bias, ls, (win, win), (shift, shift), 1.0, True, True,
                                       passes=chosen, num_stages=stages)

    split = wa.window_attention_bwd(*arg_sets[0], (win, win), (shift, shift), 1.0, True, True, passes=wa.SPLIT_BACKWARD)
    err = bu.check_close(f"{variant} backward {case}", step(*arg_sets[0]), split, bu.KERNEL_TOL[env.dtype])
    median = bu.run_benchmark(benchmark, env, step, arg_sets, rounds=bu.KERNEL_ROUNDS)
    do, q, k, v, bias, ls = arg_sets[0]
    call = OpCall.of("window_attention", (q, k, v, (win, win), (shift, shift)), dict(bias=bias, logit_scale=ls), grad=do)
    Hp, Wp = -(-H // win) * win, -(-W // win) * win
    bu.record(
        benchmark, env, median, bytes_=traffic.kernel_traffic(call).bwd, flops=2.5 * 4.0 * B * Hp * Wp * win * win * C,
        op="window_attention_bwd", passes=passes, num_stages=stages, case=case, impl="triton", dtype=bu.dtype_name(env.dtype),
        shape=dict(B=B, H=H, W=W, C=C, heads=nh, head_dim=C // nh, window=win, shift=shift), check_err=err,
    )
