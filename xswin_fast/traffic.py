"""Static memory-traffic model: the bytes a fused kernel must move per op call against the bytes
the PyTorch reference moves, and their ratio, the ideal speedup of a memory-bound kernel.

    python -m xswin_fast.traffic                      # XSwin-S/2, XSwin-B/2, DiT-S/2 at 256 and 512 px
    python -m xswin_fast.traffic --presets XSwin-L/2 --image-sizes 256

Pure shape arithmetic, nothing runs on data:

- kernel: every input tensor read once and the output written once (forward); the backward reads
  the output gradient and every input again and writes the gradient of each input that needs one.
  q, k, v, do in, o, dq, dk, dv out, the bias and the per-sample vectors included. Anything a real
  kernel re-reads (the bias per tile, partial sums) only adds to it: the ratio is an upper bound.
- reference: ``xswin_fast.ops.reference`` itself runs forward and backward on meta tensors under
  ``TrafficCounter``, which adds the bytes of every aten op's tensor inputs and outputs (views move
  nothing): the roll, pad and window partition copies, the mask and bias materialisation, dtype
  casts, the reverse partition and roll back, and their backward. SDPA counts as one fused kernel
  (q, k, v, mask, o, logsumexp; its backward also o, do, dq, dk, dv, and the mask gradient per
  sample when the bias needs one). The Swin mask is cached between calls: the steady state
  (second call) is counted.

The calls are a preset's own (``op_calls.drive_model``): every public-op call of a forward and
backward pass at the image size, grouped by op and token-map shape (one row per stage).
"""
import argparse
from collections import defaultdict
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .op_calls import NoCompute, OpCall, TensorLayout, drive_model


def _bytes(t) -> int:
    return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0


# aten ops that only relabel memory although their schema does not say so, and the read of one
# element back to the host (a sync, not traffic)
_ALIASES = {"_unsafe_view", "alias", "detach", "lift_fresh", "_local_scalar_dense"}


def moved_bytes(func, args, kwargs, out) -> int:
    """Bytes one aten op moves: its tensor inputs and outputs; views and allocations move
    nothing, ``*_like`` / ``new_*`` fills only write their output."""
    name = func.__name__.split(".")[0]
    if func.is_view or name in _ALIASES or "empty" in name:
        return 0
    written = sum(_bytes(t) for t in tree_leaves(out))
    if name.endswith("_like") or name.startswith("new_"):
        return written
    return written + sum(_bytes(t) for t in tree_leaves((args, kwargs)))


class TrafficCounter(TorchDispatchMode):
    """Adds the bytes every aten op moves (``moved_bytes``) to ``total``, and per op to ``ops``."""

    active: List["TrafficCounter"] = []

    def __init__(self):
        super().__init__()
        self.total = 0
        self.ops = defaultdict(int)

    def add(self, name: str, moved: int) -> None:
        self.total += moved
        self.ops[name] += moved

    def __enter__(self):
        TrafficCounter.active.append(self)
        return super().__enter__()

    def __exit__(self, *exc):
        TrafficCounter.active.pop()
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.namespace == "aten":
            self.add(func.__name__, moved_bytes(func, args, kwargs, out))
        return out


class _FusedSDPA(torch.autograd.Function):
    """SDPA counted as one fused kernel, in the innermost active ``TrafficCounter`` (outputs
    uninitialised)."""

    @staticmethod
    def forward(ctx, q, k, v, mask, scale):
        o = torch.empty_like(q)
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        TrafficCounter.active[-1].add("fused sdpa", sum(_bytes(t) for t in (q, k, v, mask, o, lse)))
        ctx.mask_grad = mask is not None and mask.requires_grad
        ctx.save_for_backward(q, k, v, mask, o, lse)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, mask, o, lse = ctx.saved_tensors
        grads = [torch.empty_like(t) for t in (q, k, v)]
        moved = sum(_bytes(t) for t in (q, k, v, mask, o, lse, do, *grads))
        dmask = None
        if ctx.mask_grad:
            # written per sample by the fused kernel, then summed over the batch
            moved += 2 * _bytes(mask) * q.shape[0]
            dmask = torch.empty_like(mask)
        TrafficCounter.active[-1].add("fused sdpa backward", moved)
        return (*grads, dmask, None)


class FusedAttention(TorchFunctionMode):
    """``F.scaled_dot_product_attention`` runs as ``_FusedSDPA``: one fused kernel's traffic."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q, k, v = args[:3]
            return _FusedSDPA.apply(q, k, v, kwargs.get("attn_mask"), kwargs.get("scale"))
        return func(*args, **kwargs)


def _tensors(call: OpCall, batch: Optional[int]) -> Tuple[list, dict]:
    """Fresh zero CPU tensors for ``call``'s arguments (per-sample ones at ``batch``): finite, so
    the reference takes its common path, as it does on real data."""
    def build(x):
        if not isinstance(x, TensorLayout):
            return x
        t = x.build(batch)
        with torch.no_grad():
            t.zero_()
        return t

    return [build(a) for a in call.args], {k: build(v) for k, v in call.kwargs}


class Traffic(NamedTuple):
    fwd: int
    bwd: int


def kernel_traffic(call: OpCall, batch: Optional[int] = None) -> Traffic:
    """Bytes a fused kernel must move for ``call``: inputs and output forward; output gradient,
    inputs and input gradients backward. An ``out=`` view is written, not read."""
    args, kwargs = _tensors(call, batch)
    out_view = kwargs.pop("out", None)
    tensors = [t for t in args + list(kwargs.values()) if isinstance(t, torch.Tensor)]
    inputs = sum(_bytes(t) for t in tensors)
    # every public op returns one tensor shaped like its output gradient
    out = _bytes(call.grad.build(batch)) if call.grad is not None else _bytes(out_view if out_view is not None else tensors[0])
    grads = sum(_bytes(t) for t in tensors if t.requires_grad)
    return Traffic(inputs + out, out + inputs + grads if call.grad is not None else 0)


def reference_traffic(call: OpCall, batch: Optional[int] = None) -> Traffic:
    """Bytes the reference path moves for ``call`` (``xswin_fast.ops.reference``, forward and
    backward, under the call's autocast; an ``out=`` view costs the copy into it), steady state."""
    from .ops import reference

    fn = getattr(reference, call.op)
    counts = []
    for _ in range(2):  # the first call builds and caches the Swin mask
        args, kwargs = _tensors(call, batch)
        out_view = kwargs.pop("out", None)
        leaves = [t for t in args + list(kwargs.values()) if isinstance(t, torch.Tensor) and t.requires_grad]
        fwd, bwd = TrafficCounter(), TrafficCounter()
        with NoCompute(), torch.autocast("cpu", dtype=call.autocast or torch.bfloat16, enabled=call.autocast is not None):
            with FusedAttention(), fwd:
                out = fn(*args, **kwargs)
                if out_view is not None:
                    out_view.copy_(out)
            if call.grad is not None and leaves:
                with FusedAttention(), bwd:
                    torch.autograd.grad(out, leaves, call.grad.build(batch), allow_unused=True)
        counts.append(Traffic(fwd.total, bwd.total))
    return counts[-1]


class StageRow(NamedTuple):
    preset: str
    image_size: int
    op: str
    shape: str
    kernel: Traffic
    reference: Traffic

    def bound(self, backward: bool) -> float:
        ref = self.reference.fwd + (self.reference.bwd if backward else 0)
        return ref / (self.kernel.fwd + (self.kernel.bwd if backward else 0))


def _shape(call: OpCall, batch: int) -> str:
    first = call.args[0]
    dims = (batch,) + first.shape[1:]
    extra = ""
    if call.op == "window_attention":
        kw = dict(call.kwargs)
        form = "self" if kw.get("logit_scale") is not None else "cross"
        extra = f" w{call.args[3][0]}x{call.args[3][1]} {form}"
    return "x".join(map(str, dims)) + f" {str(first.dtype).replace('torch.', '')}{extra}"


def stage_rows(preset: str, image_size: int, precision: str = "bf16", batch: int = 64) -> List[StageRow]:
    """One row per op and shape (a stage) of ``preset`` at ``image_size`` px (latent = px / 8): the
    kernel and reference bytes of its distinct calls (each once) at ``batch``."""
    calls: Dict[OpCall, set] = {}
    drive_model(preset, image_size // 8, precision, calls, backend="torch")
    groups = defaultdict(lambda: [Traffic(0, 0), Traffic(0, 0)])
    for call in calls:
        entry = groups[(call.op, _shape(call, batch))]
        k, r = kernel_traffic(call, batch), reference_traffic(call, batch)
        entry[0] = Traffic(entry[0].fwd + k.fwd, entry[0].bwd + k.bwd)
        entry[1] = Traffic(entry[1].fwd + r.fwd, entry[1].bwd + r.bwd)
    return [StageRow(preset, image_size, op, shape, k, r) for (op, shape), (k, r) in sorted(groups.items())]


def markdown(rows: Sequence[StageRow]) -> str:
    lines = ["| preset | px | op | shape (B, ...) | kernel MB fwd | reference MB fwd | bound fwd | kernel MB fwd+bwd "
             "| reference MB fwd+bwd | bound fwd+bwd |", "|---|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        mb = 1e6
        lines.append(f"| {r.preset} | {r.image_size} | {r.op} | {r.shape} | {r.kernel.fwd / mb:.1f} | "
                     f"{r.reference.fwd / mb:.1f} | {r.bound(False):.2f}x | {(r.kernel.fwd + r.kernel.bwd) / mb:.1f} | "
                     f"{(r.reference.fwd + r.reference.bwd) / mb:.1f} | {r.bound(True):.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="*", default=["XSwin-S/2", "XSwin-B/2", "DiT-S/2"])
    p.add_argument("--image-sizes", default="256,512", help="pixels; the latent is 1/8 of it (SD VAE)")
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args(argv)
    rows = [r for preset in args.presets for px in map(int, args.image_sizes.split(","))
            for r in stage_rows(preset, px, args.precision, args.batch)]
    print(markdown(rows))


if __name__ == "__main__":
    main()
