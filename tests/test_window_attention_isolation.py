"""The Triton window attention keeps windows apart and honours every stride (run through Triton's
interpreter).

Isolation: an Inf or NaN planted in one window (of q, k, v or the upstream gradient) must leave
the output and the dq, dk, dv of every other window -- in particular those computed in the same
step of the SMALL path and those of the other samples -- exactly as in the clean run. The
reference keeps windows apart (one softmax per window); a kernel that multiplies a masked
probability of 0 by a foreign Inf does not.

Strides: q, k, v, bias and logit_scale are read through their strides, whatever they are.
"""
import math

import pytest
import torch

from helpers import strided
from xswin_fast import ops
from xswin_fast.kernels import window_attention as wa

# id: (B, H, W, window, shift, heads, d, cosine, bias); both kernel paths, every kind of mask
CASES = {
    "w2-small-shift-pad-cos": (2, 5, 7, (2, 2), (1, 1), 2, 16, True, True),
    "w2x3-small-shift-dot": (2, 4, 6, (2, 3), (1, 1), 2, 16, False, True),
    "w1-small-dot": (2, 3, 5, (1, 1), (0, 0), 1, 16, False, False),
    "w4-edge-masks-shift-cos": (2, 8, 8, (4, 4), (2, 2), 2, 16, True, True),
    "w7-empty-slots-pad-dot": (2, 9, 9, (7, 7), (3, 3), 1, 16, False, True),
    "w8-edge-masks-shift-cos": (2, 16, 16, (8, 8), (4, 4), 1, 16, True, True),
}
# (tensor, value) planted at one token of sample 0
POISONS = [("q", math.nan), ("k", math.inf), ("v", math.inf), ("v", math.nan), ("do", -math.inf)]


def make(B, H, W, window, shift, nh, d, cosine, bias, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = torch.randn(3, B, H, W, nh, d, generator=g).unbind(0)
    N = window[0] * window[1]
    b = torch.randn(nh, N, N, generator=g) if bias else None
    ls = torch.linspace(1.0, 3.0, nh) if cosine else None
    do = torch.randn(B, H, W, nh * d, generator=g)
    return dict(q=q, k=k, v=v, do=do), b, ls


def window_ids(B, H, W, window, shift):
    """(B, H, W) id of the window (b, shifted-frame window row, window column) holding each token."""
    (wh, ww), (sh, sw) = window, shift
    Hp, Wp = -(-H // wh) * wh, -(-W // ww) * ww
    rows = ((torch.arange(H) - sh) % Hp) // wh
    cols = ((torch.arange(W) - sw) % Wp) // ww
    win = rows[:, None] * (Wp // ww) + cols[None, :]
    return torch.arange(B)[:, None, None] * (Hp // wh) * (Wp // ww) + win


def forward_backward(tensors, window, shift, bias, logit_scale):
    q, k, v = (tensors[n].clone().requires_grad_() for n in "qkv")
    o = ops.window_attention(q, k, v, window, shift, bias, logit_scale, backend="triton")
    dq, dk, dv = torch.autograd.grad(o, (q, k, v), tensors["do"])
    return dict(o=o.detach(), dq=dq, dk=dk, dv=dv)


@pytest.mark.parametrize("name, value", POISONS, ids=[f"{n}-{v}" for n, v in POISONS])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_a_non_finite_token_stays_in_its_window(case, name, value):
    check_isolation(case, name, value)


@pytest.mark.parametrize("name, value", POISONS, ids=[f"{n}-{v}" for n, v in POISONS])
@pytest.mark.parametrize("case", ["w4-edge-masks-shift-cos", "w7-empty-slots-pad-dot"])
def test_a_non_finite_token_stays_in_its_window_split_backward(case, name, value, monkeypatch):
    # the two-pass backward that 16-bit 64-token tiles take, here on fp32 inputs
    monkeypatch.setattr(wa, "backward_passes", lambda *args: wa.SPLIT_BACKWARD)
    check_isolation(case, name, value)


@pytest.mark.parametrize("name, value", POISONS, ids=[f"{n}-{v}" for n, v in POISONS])
@pytest.mark.parametrize("case", ["w8-edge-masks-shift-cos", "w7-empty-slots-pad-dot"])
def test_a_non_finite_token_stays_in_its_window_blocked_backward(case, name, value, monkeypatch):
    # the blocked split that 16-bit cosine 64-token tiles take on mma.sync GPUs: the softmax
    # statistics a query row's dq pass writes are its own window's, and so is what reads them
    monkeypatch.setattr(wa, "backward_passes", lambda *args: wa.BLOCKED_BACKWARD)
    check_isolation(case, name, value)


def check_isolation(case, name, value):
    B, H, W, window, shift, nh, d, cosine, bias = CASES[case]
    tensors, b, ls = make(*CASES[case])
    clean = forward_backward(tensors, window, shift, b, ls)
    # a token inside the map, away from the first window: tiles pack it with its neighbours
    h, w = min(H - 1, window[0] + 1), min(W - 1, window[1])
    poisoned = {n: t.clone() for n, t in tensors.items()}
    if name == "do":
        poisoned["do"][0, h, w, :] = value
    else:
        poisoned[name][0, h, w, 0, :] = value
    dirty = forward_backward(poisoned, window, shift, b, ls)
    ids = window_ids(B, H, W, window, shift)
    other = ids != ids[0, h, w]
    assert other[1].all() and (~other).sum() < other.sum()
    for key in ("o", "dq", "dk", "dv"):
        got, want = dirty[key][other], clean[key][other]
        assert torch.isfinite(want).all(), key
        assert torch.equal(got, want), f"{key}: {(~torch.isclose(got, want)).sum().item()} values of other windows changed"
    # the poison does reach its own window (the test would pass vacuously otherwise)
    assert not all(torch.isfinite(dirty[key][~other]).all() for key in ("o", "dq", "dk", "dv"))


def gradients(q, k, v, window, shift, bias, logit_scale, do):
    # detach keeps the strides (clone would pack a strided view)
    leaves = [t.detach().requires_grad_() for t in (q, k, v, bias, logit_scale) if t is not None]
    it = iter(leaves)
    args = [next(it) if t is not None else None for t in (q, k, v, bias, logit_scale)]
    o = ops.window_attention(*args[:3], window, shift, args[3], args[4], backend="triton")
    return [o.detach(), *torch.autograd.grad(o, leaves, do)]


@pytest.mark.parametrize("which", ["logit_scale", "bias-rows", "bias-heads", "q-rows", "k-heads", "v-channels"])
def test_strided_inputs_give_the_contiguous_result(which):
    B, H, W, window, shift, nh, d = 2, 5, 6, (2, 3), (1, 1), 3, 16
    tensors, b, ls = make(B, H, W, window, shift, nh, d, True, True)
    q, k, v, do = tensors["q"], tensors["k"], tensors["v"], tensors["do"]
    ls = torch.tensor([0.5, 2.0, 4.0])
    want = gradients(q, k, v, window, shift, b, ls, do)
    if which == "logit_scale":
        ls = strided(ls, 0)
    elif which == "bias-rows":
        b = strided(b, 1)
    elif which == "bias-heads":
        b = strided(b, 0)
    elif which == "q-rows":
        q = strided(q, 1)
    elif which == "k-heads":
        k = strided(k, 3)
    else:
        v = strided(v, 4)
    got = gradients(q, k, v, window, shift, b, ls, do)
    for name, g, w in zip(["o", "dq", "dk", "dv", "dbias", "dlogit_scale"], got, want):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6, msg=lambda m: f"{which} {name}: {m}")
