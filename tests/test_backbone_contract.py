"""The contract every backbone keeps (``DiffusionBackbone``), run over a tiny model of every family
the registry builds (their specs: families.py): shapes with learned sigma on and off,
classifier-free guidance, a training step, gradient checkpointing, backends, mixed precision,
input validation and determinism. Family-specific behaviour is tested in test_xswin.py,
test_dit.py, test_diffit.py, test_ascend.py and test_iuvit.py."""
import pytest
import torch

import xswin_fast.ops as ops
from families import FAMILIES, spec, tiny
from helpers import (
    assert_fits_a_fixed_batch, assert_same_forward_backward, forward_backward, model_inputs, randomize_, triton_adaln,
)
from xswin_fast.kernels import adaln as adaln_kernels

family = pytest.mark.parametrize("cls", FAMILIES, ids=lambda c: c.__name__)
PATCH_SIZES = [(cls, p) for cls in FAMILIES for p in spec(cls).patch_sizes or (None,)]


def repeated_blocks(model):
    """The blocks the model declares in ``_repeated_blocks``: those ``run_block`` runs (and checkpoints)."""
    return [m for m in model.modules() if type(m).__name__ in model._repeated_blocks]


@pytest.mark.parametrize("learn_sigma", [True, False])
@pytest.mark.parametrize("cls, patch_size", PATCH_SIZES, ids=lambda v: getattr(v, "__name__", str(v)))
def test_output_shape(cls, learn_sigma, patch_size):
    patch = {} if patch_size is None else {"patch_size": patch_size}
    model = randomize_(tiny(cls, learn_sigma=learn_sigma, **patch))
    assert model.out_channels == (8 if learn_sigma else 4)
    out = model(*model_inputs(model, B=3))
    assert out.shape == (3, model.out_channels, 8, 8)
    assert torch.isfinite(out).all()


@family
def test_forward_with_cfg(cls):
    model = randomize_(tiny(cls)).eval()
    x, t, _ = model_inputs(model, B=4)
    t = torch.cat([t[:2], t[:2]])
    y = torch.tensor([1, 2, model.num_classes, model.num_classes])  # cond half, then null half
    raw = model(torch.cat([x[:2], x[:2]]), t, y)
    cond, uncond = raw[:2], raw[2:]
    assert not torch.allclose(cond[:, :4], uncond[:, :4])

    out = model.forward_with_cfg(x, t, y, cfg_scale=4.0)
    assert out.shape == raw.shape
    assert torch.equal(out[:2, :4], out[2:, :4])
    # every eps channel is guided by default; learned sigma passes through unguided
    torch.testing.assert_close(out[:2, :4], uncond[:, :4] + 4.0 * (cond[:, :4] - uncond[:, :4]))
    torch.testing.assert_close(out[:, 4:], raw[:, 4:])

    # cfg_scale=1 is the conditional prediction
    out1 = model.forward_with_cfg(x, t, y, cfg_scale=1.0)
    torch.testing.assert_close(out1[:2, :4], cond[:, :4])
    torch.testing.assert_close(out1[2:, :4], cond[:, :4])

    # DiT's quirk: only the first three channels guided
    out3 = model.forward_with_cfg(x, t, y, cfg_scale=4.0, guided_channels=3)
    torch.testing.assert_close(out3[:, :3], out[:, :3])
    torch.testing.assert_close(out3[:, 3:], raw[:, 3:])
    assert not torch.allclose(out3[:2, 3], out3[2:, 3])

    with pytest.raises(ValueError, match="even batch"):
        model.forward_with_cfg(x[:1], t[:1], y[:1], 2.0)
    with pytest.raises(ValueError, match="guided_channels"):
        model.forward_with_cfg(x, t, y, 2.0, guided_channels=5)


@family
def test_training_step_lowers_loss_on_fixed_batch(cls):
    model = tiny(cls, class_dropout_prob=0.0).train()
    assert_fits_a_fixed_batch(model, model_inputs(model, B=4), lr=3e-3)


@family
def test_each_adaln_projection_runs_once_per_forward(cls):
    """The conditioning contract: every layer projects its own adaLN vectors from the plain
    ``cond`` tensor, once per forward."""
    model = randomize_(tiny(cls))
    calls = []
    projections = spec(cls).conditioning_projections(model)
    assert all(isinstance(m, torch.nn.Linear) for m in projections)
    for linear in projections:
        linear.register_forward_hook(lambda module, *_: calls.append(module))
    model(*model_inputs(model))
    assert len(calls) == len(projections) == len({id(m) for m in calls})


@family
def test_gradient_checkpointing_gives_same_outputs_and_gradients(cls):
    model = randomize_(tiny(cls))
    inputs = model_inputs(model, B=4)
    calls = []
    for block in repeated_blocks(model):
        # forward hooks do not fire in checkpoint's recomputation, so count forward() itself
        block.forward = lambda *a, _f=block.forward: calls.append(1) or _f(*a)

    def run(checkpointing):
        model.set_grad_checkpointing(checkpointing)
        calls.clear()
        return forward_backward(model, inputs, seed=123), len(calls)

    (ref_out, ref), n_plain = run(False)
    (out, got), n_ckpt = run(True)
    assert n_plain == len(repeated_blocks(model)) and n_ckpt == 2 * n_plain  # each block recomputed once
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    assert ref.keys() == got.keys()
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=1e-5, atol=1e-6, msg=n)
    adaln_params = {id(w) for linear in spec(cls).conditioning_projections(model) for w in linear.parameters()}
    if adaln_params:  # IUViT has none: its conditioning tokens get gradients like any activation
        assert any(ref[n].abs().sum() > 0 for n, p in model.named_parameters() if id(p) in adaln_params)


@family
def test_set_backend_reaches_every_op_module(cls):
    model = tiny(cls)
    users = [m for m in model.modules() if hasattr(m, "backend")]
    assert bool(users) == spec(cls).calls_ops
    model.set_backend(None)
    assert all(m.backend is None for m in users)
    model.set_backend("torch")
    assert all(m.backend == "torch" for m in users)
    with pytest.raises(ValueError, match="backend"):
        model.set_backend("cuda")


@family
def test_automatic_backend_matches_torch(cls):
    model = randomize_(tiny(cls)).eval()
    x, t, y = model_inputs(model)
    ref = model(x, t, y)
    model.set_backend(None)
    torch.testing.assert_close(model(x, t, y), ref, atol=1e-5, rtol=1e-5)


@family
def test_whole_model_runs_every_adaln_site_fused(cls, monkeypatch):
    model = randomize_(tiny(cls), std=0.1)
    fused = triton_adaln(model)
    adaln_ops = adaln_kernels.OPS
    calls = {op: 0 for op in adaln_ops}
    for op in adaln_ops:
        def counting(*args, _op=op, _fn=getattr(adaln_kernels, op)):
            calls[_op] += 1
            return _fn(*args)

        def forbidden(*args, _op=op):
            raise AssertionError(f"{_op} ran on the reference")

        monkeypatch.setattr(adaln_kernels, op, counting)
        monkeypatch.setattr(ops.reference, op, forbidden)
    inputs = model_inputs(model)
    got = forward_backward(fused, inputs)
    assert {op: n for op, n in calls.items() if n} == spec(cls).adaln_ops(model)
    monkeypatch.undo()
    assert_same_forward_backward(got, forward_backward(model, inputs))


@family
def test_bf16_autocast(cls):
    model = randomize_(tiny(cls)).eval()
    x, t, y = model_inputs(model)
    ref = model(x, t, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t, y)
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape and torch.isfinite(out).all()
    assert (out.float() - ref).norm() / ref.norm() < 0.05


@family
def test_bad_inputs_raise(cls):
    model = tiny(cls)
    x, t, y = model_inputs(model)
    with pytest.raises(ValueError, match="x must have shape"):
        model(x[0], t, y)
    with pytest.raises(ValueError, match="x must have shape"):
        model(x[:, :3], t, y)
    with pytest.raises(TypeError, match="x must be a floating-point"):
        model(x.long(), t, y)
    with pytest.raises(ValueError, match="t must be"):
        model(x, t[:1], y)
    with pytest.raises(TypeError, match="y must be an integer"):
        model(x, t, y.float())
    with pytest.raises(ValueError, match="labels in"):
        model(x, t, torch.tensor([0, model.num_classes + 1]))
    with pytest.raises(ValueError, match="labels in"):
        model(x, t, torch.tensor([-1, 0]))


@family
def test_null_label_is_num_classes(cls):
    model = tiny(cls).eval()
    x, t, _ = model_inputs(model)
    assert model(x, t, torch.tensor([0, model.num_classes])).shape[0] == 2  # the null class is accepted
    assert model.y_embedder.embedding_table.num_embeddings == model.num_classes + 1
    no_null = tiny(cls, class_dropout_prob=0.0)
    assert no_null.y_embedder.embedding_table.num_embeddings == no_null.num_classes
    with pytest.raises(ValueError, match="labels in"):
        no_null(x, t, torch.tensor([0, no_null.num_classes]))


@family
def test_forward_is_deterministic(cls):
    model = randomize_(tiny(cls))
    inputs = model_inputs(model)
    assert torch.equal(model.eval()(*inputs), model(*inputs))
    model.train()  # drop path and label dropout: the same draws give the same result
    first, first_grads = forward_backward(model, inputs, seed=5)
    second, second_grads = forward_backward(model, inputs, seed=5)
    assert torch.equal(first, second)
    assert all(torch.equal(first_grads[n], second_grads[n]) for n in first_grads)
