"""Fused adaLN kernels (xswin_fast.kernels.adaln) through Triton's interpreter: forward and every
gradient against the reference, poisoned allocations, deterministic reductions, layouts, bad
inputs, torch.compile. Whole models on the Triton backend are in test_backbone_contract.py."""
import pytest
import torch

import xswin_fast.ops as ops
from helpers import assert_close, poisoned_allocations
from xswin_fast.kernels import adaln

OPS = adaln.OPS
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (B, ..., C): 3-D tokens (B, H, W, C), 2-D tokens (B, L, C) with B = 1 and C = 1152, no tokens
SHAPES = [(2, 5, 7, 96), (1, 13, 1152), (3, 200)]


def make_args(op, shape, dtype=torch.float32, seed=0, keep_grad=True):
    """Positional tensor args and the eps kwarg of ``ops.<op>`` on fresh random inputs."""
    g = torch.Generator().manual_seed(seed)
    B, C = shape[0], shape[-1]

    def rand(*s, scale=1.0, offset=0.0, grad=True):
        return (torch.randn(*s, generator=g) * scale + offset).to(dtype).requires_grad_(grad)

    x, y = rand(*shape, scale=2.0, offset=0.5), rand(*shape)
    shift, scale, gate = rand(B, C, scale=0.5), rand(B, C, scale=0.5), rand(B, C)
    weight, bias = rand(C, scale=0.2, offset=1.0), rand(C, scale=0.2)
    keep = (torch.rand(B, generator=g) + 0.5).to(dtype).requires_grad_(keep_grad)
    return {
        "modulate": ((x, shift, scale), {}),
        "layernorm_modulate": ((x, shift, scale), {"eps": 1e-6}),
        "gated_residual": ((x, y, gate), {}),
        "modulate_layernorm": ((x, shift, scale, weight, bias), {"eps": 1e-5}),
        "residual_layernorm": ((x, y, weight, bias, keep), {"eps": 1e-5}),
    }[op]


def grad_inputs(args):
    return [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]


def run(op, args, kwargs, backend, grad_out=None):
    """(output, grads of every input that requires grad) of ops.<op> on backend."""
    out = getattr(ops, op)(*args, backend=backend, **kwargs)
    if grad_out is None:
        return out, ()
    return out, torch.autograd.grad(out, grad_inputs(args), grad_out)


def run_both(op, args, kwargs, seed=1):
    """Kernel (under poisoned allocations) and fp32 reference on upcast copies of the inputs."""
    g = torch.Generator().manual_seed(seed)
    ref_args = [a.detach().float().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a for a in args]
    ref = getattr(ops, op)(*ref_args, backend="torch", **kwargs)
    # representable in the inputs' dtype, so that both sides see the same upstream gradient
    grad_out = torch.randn(ref.shape, generator=g).to(args[0].dtype).float()
    ref_grads = torch.autograd.grad(ref, grad_inputs(ref_args), grad_out)
    with poisoned_allocations():
        out, grads = run(op, args, kwargs, "triton", grad_out.to(args[0].dtype))
    return (out, grads), (ref, ref_grads)


def check_against_reference(op, args, kwargs):
    dtype = args[0].dtype
    (out, grads), (ref, ref_grads) = run_both(op, args, kwargs)
    assert out.dtype == getattr(ops.reference, op)(*args, **kwargs).dtype
    assert_close(f"{op} out", out, ref, dtype)
    assert len(grads) == len(ref_grads) == len(grad_inputs(args))
    for i, (g, r, a) in enumerate(zip(grads, ref_grads, grad_inputs(args))):
        assert g.dtype == a.dtype and g.shape == a.shape
        assert_close(f"{op} grad {i}", g, r, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("op", OPS)
def test_forward_and_gradients_match_reference(op, shape, dtype):
    check_against_reference(op, *make_args(op, shape, dtype))


@pytest.mark.parametrize("op", OPS)
def test_many_programs_and_tiles_per_sample(op, monkeypatch):
    """Several programs per sample (partials reduced in stage two), several tiles per program and a
    masked tail tile."""
    monkeypatch.setattr(adaln, "_programs_per_sample", lambda B, n_tiles, device: 4)
    monkeypatch.setattr(adaln, "TILE_ELEMENTS", 256)  # C = 100 -> BC = 128, BT = 2
    cfg = adaln._plan(2, 37, 100, torch.device("cpu"))
    assert cfg.BT == 2 and cfg.grid == (2, 4) and cfg.TPP == 10
    check_against_reference(op, *make_args(op, (2, 37, 100)))


def test_widest_rows():
    for op in ("modulate", "layernorm_modulate", "residual_layernorm"):
        check_against_reference(op, *make_args(op, (1, 3, adaln.MAX_CHANNELS)))


@pytest.mark.parametrize("weight, bias", [(True, True), (True, False), (False, True), (False, False)])
def test_modulate_layernorm_optional_affine(weight, bias):
    (x, shift, scale, w, b), kw = make_args("modulate_layernorm", (2, 9, 48))
    check_against_reference("modulate_layernorm", (x, shift, scale, w if weight else None, b if bias else None), kw)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("keep", ["none", "constant", "learned"])
def test_residual_layernorm_optional_arguments(affine, keep):
    (x, y, w, b, k), kw = make_args("residual_layernorm", (3, 4, 5, 40), keep_grad=keep == "learned")
    if keep == "constant":
        k = k.detach().clone()
        k[1] = 0.0  # a dropped branch, as stochastic depth draws it
    args = (x, y, w if affine else None, b if affine else None, None if keep == "none" else k)
    check_against_reference("residual_layernorm", args, kw)


@pytest.mark.parametrize("op", OPS)
def test_gradients_are_bitwise_deterministic(op, monkeypatch):
    monkeypatch.setattr(adaln, "_programs_per_sample", lambda B, n_tiles, device: 3)
    monkeypatch.setattr(adaln, "TILE_ELEMENTS", 512)
    args, kw = make_args(op, (2, 6, 11, 64), seed=3)
    grad_out = torch.randn(2, 6, 11, 64)
    first = run(op, args, kw, "triton", grad_out)[1]
    second = run(op, args, kw, "triton", grad_out)[1]
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("op", ["modulate", "layernorm_modulate", "modulate_layernorm"])
def test_channels_first_maps_are_read_and_written_in_place(op):
    """Modulator(channels_last=False) permutes a (B, C, H, W) map: no copy in, a channels-first
    output whose permute back is a contiguous (B, C, H, W) map, and channels-first grads."""
    args, kw = make_args(op, (2, 5, 6, 24))
    # the same values as a (B, H, W, C) view of a contiguous (B, C, H, W) map
    x = args[0].detach().permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1).requires_grad_()
    assert x.stride(-1) != 1
    args = (x,) + args[1:]
    check_against_reference(op, args, kw)
    out = getattr(ops, op)(*args, backend="triton", **kw)
    assert out.permute(0, 3, 1, 2).is_contiguous()


def test_other_layouts():
    """Token dims that do not fold into one stride (copied), strided (B, C) rows (read in place),
    a column-major shift, and x, y of different layouts."""
    args, kw = make_args("gated_residual", (2, 4, 6, 32))
    x = args[0].detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()  # H, W swapped in memory
    rows = torch.randn(3, 2, 4 * 32)
    gate = rows[1, :, 32:64].clone().requires_grad_()
    check_against_reference("gated_residual", (x, args[1], gate), kw)
    proj = torch.randn(2, 4 * 32, requires_grad=True)  # one batched projection: shift/scale are slices
    shift, scale = proj[:, 32:64], proj[:, 96:]
    x2, _, _ = make_args("modulate", (2, 7, 32))[0]
    (out, grads), (ref, ref_grads) = run_both("modulate", (x2, shift, scale.t().contiguous().t()), {})
    assert_close("strided rows", out, ref, torch.float32)
    for g, r in zip(grads, ref_grads):
        assert_close("strided rows grad", g, r, torch.float32)


def test_mixed_dtypes_promote_as_the_reference():
    args, kw = make_args("modulate", (2, 5, 16), torch.float16)
    shift, scale = (a.detach().float().requires_grad_() for a in args[1:])
    check_against_reference("modulate", (args[0], shift, scale), kw)
    assert ops.modulate(args[0], shift, scale, backend="triton").dtype == torch.float32


def test_one_plus_scale_is_formed_in_fp32():
    """bf16 (1 + 1e-3) rounds to 1; the kernel adds the bf16 scale to 1 in fp32."""
    x = torch.full((1, 4, 8), 1000.0)
    scale = torch.full((1, 8), 1e-3, dtype=torch.bfloat16)
    shift = torch.zeros(1, 8, dtype=torch.bfloat16)
    out = ops.modulate(x, shift, scale, backend="triton")
    torch.testing.assert_close(out, x * (1 + scale.float()), rtol=1e-7, atol=0)
    assert (out - 1000.0).abs().min() > 0.9


@pytest.mark.parametrize("op", OPS)
def test_empty_token_dims(op):
    args, kw = make_args(op, (2, 0, 16))
    out, grads = run(op, args, kw, "triton", torch.zeros(2, 0, 16))
    assert out.shape == (2, 0, 16)
    assert all(g.shape == a.shape and not g.any() for g, a in zip(grads, grad_inputs(args)))


def test_poisoning_catches_an_unwritten_program(monkeypatch):
    """Negative control: drop the last program of each sample and the poisoned output shows it."""
    plan = adaln._plan
    monkeypatch.setattr(adaln, "_programs_per_sample", lambda B, n_tiles, device: 2)
    monkeypatch.setattr(adaln, "TILE_ELEMENTS", 32)  # C = 8: 4 tokens per tile, 2 tiles per program

    def short(*a, **k):
        cfg = plan(*a, **k)
        return cfg._replace(grid=(cfg.grid[0], cfg.grid[1] - 1))

    monkeypatch.setattr(adaln, "_plan", short)
    (x, shift, scale), _ = make_args("modulate", (2, 16, 8))
    with poisoned_allocations():
        out = ops.modulate(x, shift, scale, backend="triton")
    assert torch.isnan(out[:, -1]).all() and not torch.isnan(out[:, 0]).any()


def test_bad_inputs_raise_clear_errors():
    (x, shift, scale), _ = make_args("modulate", (2, 5, 16))
    (_, y, gate), _ = make_args("gated_residual", (2, 5, 16))
    (_, _, _, w, b), _ = make_args("modulate_layernorm", (2, 5, 16))
    with pytest.raises(ValueError, match=r"shift must have shape \(B, C\) = \(2, 16\)"):
        ops.modulate(x, shift[:, :15], scale, backend="triton")
    with pytest.raises(ValueError, match=r"scale must have shape \(B, C\) = \(2, 16\)"):
        ops.layernorm_modulate(x, shift, scale[:1], backend="triton")
    with pytest.raises(ValueError, match="scale must have shape"):
        ops.modulate(x, shift, torch.randn(3, 16), backend="triton")
    with pytest.raises(ValueError, match="gate must have shape"):
        ops.gated_residual(x, y, gate[:, None], backend="triton")
    with pytest.raises(ValueError, match="y must have x's shape"):
        ops.gated_residual(x, y[:, :4], gate, backend="triton")
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        ops.modulate(x.long(), shift, scale, backend="triton")
    with pytest.raises(TypeError, match="shift must be a floating-point tensor"):
        ops.modulate(x, shift.int(), scale, backend="triton")
    with pytest.raises(ValueError, match=r"weight must have shape \(C,\)"):
        ops.modulate_layernorm(x, shift, scale, w[:8], b, backend="triton")
    with pytest.raises(ValueError, match=r"keep must have shape \(B,\)"):
        ops.residual_layernorm(x, y, w, b, torch.ones(3), backend="triton")
    with pytest.raises(ValueError, match="x must have shape"):
        ops.modulate(torch.randn(16), shift, scale, backend="triton")
    with pytest.raises(ValueError, match="C <= 8192"):
        ops.modulate(torch.randn(1, 2, 8200), torch.zeros(1, 8200), torch.zeros(1, 8200), backend="triton")


@pytest.mark.parametrize("fwd, bwd, args", [
    ("modulate_fwd", "modulate_bwd", "modulate"),
    ("gated_residual_fwd", "gated_residual_bwd", "gated_residual"),
    ("modulate_layernorm_fwd", "modulate_layernorm_bwd", "modulate_layernorm"),
    ("residual_layernorm_fwd", "residual_layernorm_bwd", "residual_layernorm"),
])
def test_custom_ops_fake_implementations_match(fwd, bwd, args):
    """opcheck's schema and fake-tensor checks (shapes, dtypes, strides), channels-first included."""
    (x, *rest), kw = make_args(args, (2, 3, 4, 8))
    x = x.detach().permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)  # channels-first (B, H, W, C) view
    rest = [r.detach() for r in rest]
    do = torch.randn(x.shape)
    eps = kw.get("eps", 1e-6)
    fwd_args = {
        "modulate": lambda: ((x, *rest, eps, True), (x, *rest, do, eps, True)),
        "gated_residual": lambda: ((x, *rest), (rest[0], rest[1], do)),
        "modulate_layernorm": lambda: ((x, *rest, eps), (x, *rest, do, eps)),
        "residual_layernorm": lambda: ((x, *rest, eps), (*rest, do, eps, True)),
    }[args]()
    for name, a in zip((fwd, bwd), fwd_args):
        torch.library.opcheck(getattr(torch.ops.xswin_fast, name).default, a, test_utils=("test_schema", "test_faketensor"))


def test_torch_compile_fullgraph_traces_the_fused_ops():
    class Fused(torch.nn.Module):
        def __init__(self, C):
            super().__init__()
            self.proj = torch.nn.Linear(C, 8 * C)
            self.ln = torch.nn.LayerNorm(C)

        def forward(self, x, y, c):
            s1, c1, g, s2, c2, keep, _, _ = self.proj(c).chunk(8, dim=1)
            h = ops.layernorm_modulate(x, s1, c1, backend="triton")
            h = ops.gated_residual(x, h, g, backend="triton")
            h = ops.modulate(h, s2, c2, backend="triton")
            h = ops.modulate_layernorm(h, s1, c2, self.ln.weight, self.ln.bias, backend="triton")
            return ops.residual_layernorm(h, y, self.ln.weight, None, keep[:, 0], backend="triton")

    torch.manual_seed(0)
    model = Fused(24)
    x, y, c = torch.randn(2, 5, 24, requires_grad=True), torch.randn(2, 5, 24), torch.randn(2, 24)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    outs = []
    for m in (model, compiled):
        out = m(x, y, c)
        out.square().sum().backward()
        outs.append((out.detach(), x.grad.clone(), model.proj.weight.grad.clone()))
        x.grad = None
        model.zero_grad()
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cap, maxnreg", [((9, 0), None), ((8, 0), None), ((10, 0), 255), ((12, 0), 255)])
def test_token_kernels_carry_the_register_cap_where_ptxas_blackwell_spills_without(monkeypatch, cap, maxnreg):
    # sm_100a / sm_120: without a cap ptxas-blackwell budgets some token kernels below their need
    from xswin_fast.kernels import adaln, device

    monkeypatch.setattr(device, "capability", lambda dev: cap)
    plan = adaln._plan(2, 64, 96, torch.device("cpu"))
    assert plan.options == dict(num_warps=plan.num_warps, **({"maxnreg": maxnreg} if maxnreg else {}))
