"""Slow, obviously-correct twins of the ops, written straight from docs/design.md §3 — independent of
``xswin_fast.ops.reference`` (no roll, no partition reshapes, no SDPA, no additive masks).

Everything is computed in float64 and stays differentiable, so the tests can compare both values
and autograd gradients against the ops.
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from helpers import LOG_100


def _region(i: int, padded: int, window: int, shift: int) -> int:
    """Swin region of shifted-frame position i along one axis (docs/design.md §3.1, step 4)."""
    if shift == 0 or i < padded - window:
        return 0
    if i < padded - shift:
        return 1
    return 2


def naive_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window_size: Sequence[int],
    shift_size: Sequence[int] = (0, 0),
    bias: Optional[torch.Tensor] = None,
    logit_scale: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
) -> torch.Tensor:
    """(B, H, W, heads, d) q, k, v -> (B, H, W, heads*d) float64, one query token at a time.

    1. pad (H, W) bottom/right to window multiples (Hp, Wp) — implicitly: a position is real
       when its padded-map coordinates are < (H, W);
    2. shifted-frame position (i, j) holds padded-map token ((i + sh) % Hp, (j + sw) % Wp);
    3. windows are the non-overlapping (wh, ww) blocks of the shifted frame;
    4. with a shift, two tokens interact only inside one Swin region on both axes;
    5. padded keys are excluded from the softmax, padded queries are not computed;
    6. each output lands at its original position.

    A query's scores, softmax and weighted sum are taken over the keys it may attend to and
    nothing else, so a key it may not attend to contributes nothing to its output or gradients,
    whatever values (Inf, NaN) that key holds (docs/design.md §3.1, non-finite values).
    """
    B, H, W, nh, d = q.shape
    wh, ww = window_size
    sh, sw = shift_size
    Hp = -(-H // wh) * wh
    Wp = -(-W // ww) * ww

    q, k, v = q.double(), k.double(), v.double()
    if logit_scale is not None:
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        temperature = torch.exp(torch.clamp(logit_scale.double(), max=LOG_100))  # (heads,)
    else:
        temperature = torch.full((nh,), d ** -0.5 if scale is None else float(scale), dtype=torch.float64)
    if bias is not None:
        bias = bias.double()

    out = torch.zeros(B, H, W, nh, d, dtype=torch.float64)
    written = torch.zeros(B, H, W, dtype=torch.bool)
    for b in range(B):
        for win_i in range(Hp // wh):
            for win_j in range(Wp // ww):
                # every token of this window of the shifted frame
                tokens = []  # (index inside the window, original row, original col, region, real)
                for a in range(wh):
                    for c in range(ww):
                        fi, fj = win_i * wh + a, win_j * ww + c  # shifted-frame position
                        oi, oj = (fi + sh) % Hp, (fj + sw) % Wp  # padded-map position
                        region = (_region(fi, Hp, wh, sh), _region(fj, Wp, ww, sw))
                        tokens.append((a * ww + c, oi, oj, region, oi < H and oj < W))
                for n_q, qi, qj, q_region, q_real in tokens:
                    if not q_real:
                        continue
                    keys = [(n_k, ki, kj) for n_k, ki, kj, k_region, k_real in tokens if k_real and k_region == q_region]
                    assert keys, "a real query always sees at least itself"
                    n_keys, k_rows, k_cols = (list(t) for t in zip(*keys))
                    k_sel = k[b, k_rows, k_cols]  # (keys, heads, d)
                    v_sel = v[b, k_rows, k_cols]  # (keys, heads, d)
                    # scores[h, n] = <q_h, k_{n,h}> * temperature_h (+ bias[h, n_q, n_k])
                    scores = (q[b, qi, qj][None] * k_sel).sum(-1).T * temperature[:, None]  # (heads, keys)
                    if bias is not None:
                        scores = scores + bias[:, n_q, n_keys]
                    p = torch.softmax(scores, dim=-1)  # over the allowed keys only
                    out[b, qi, qj] = (p.T[:, :, None] * v_sel).sum(0)  # (heads, d)
                    assert not written[b, qi, qj], "each token is written exactly once"
                    written[b, qi, qj] = True
    assert bool(written.all()), "every real token is written"
    return out.reshape(B, H, W, nh * d)


def naive_layer_norm(x: torch.Tensor, eps: float, weight=None, bias=None) -> torch.Tensor:
    """LayerNorm over the last dim, spelled out: (x - mean) / sqrt(biased var + eps) [* w + b]."""
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def per_sample(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B, C) -> (B, 1, ..., 1, C) to broadcast over the token dims of x (DiT's ``unsqueeze(1)``)."""
    for _ in range(x.dim() - 2):
        t = t.unsqueeze(1)
    return t

