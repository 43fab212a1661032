"""Batched adaLN projection (one GEMM per forward, BatchedModulation) vs one Linear per modulator,
on the CPU path with one thread.

    python benchmarks/adaln_batching.py [repeats]

Interleaved in one process: per repeat, each variant runs `n` calls back to back, variants
alternate order every repeat. Reports the median over repeats of t_unbatched / t_batched.
"""
import copy
import statistics
import sys
import time

import torch

from xswin_fast import create_model
from xswin_fast.models.xswin import XSwin

torch.set_num_threads(1)
REPEATS = int(sys.argv[1]) if len(sys.argv) > 1 else 5


def digits():
    return XSwin(input_size=8, patch_size=1, in_channels=1, embed_dim=32, depths=(2, 2), num_heads=(1, 2),
                 window_size=2, bottleneck_depth=1, num_classes=10, stochastic_depth_prob=0.0)


CONFIGS = [
    ("XSwin-digits", digits, 8, [1, 16, 64]),
    ("XSwin-S/2", lambda: create_model("XSwin-S/2"), 32, [1, 8]),
    ("DiT-S/2", lambda: create_model("DiT-S/2"), 32, [1, 8]),
]


def randomise(model):
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.02 * torch.randn_like(p))
    return model.set_backend("torch")


def timed(fn, n):
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def main():
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, repeats {REPEATS}")
    for name, build, size, batches in CONFIGS:
        batched = randomise(build())
        unbatched = copy.deepcopy(batched)
        unbatched._adaln = lambda x, cond: cond  # every layer projects its own conditioning
        for B in batches:
            x = torch.randn(B, batched.in_channels, size, size)
            t = torch.randint(0, 1000, (B,))
            y = torch.randint(0, batched.num_classes, (B,))
            for mode in ("fwd", "fwd+bwd"):
                def call(m):
                    if mode == "fwd":
                        m.eval()
                        with torch.no_grad():
                            m(x, t, y)
                    else:
                        m.train()
                        m.zero_grad(set_to_none=True)
                        m(x, t, y).square().mean().backward()
                models = {"batched": batched, "unbatched": unbatched}
                for m in models.values():  # warm up
                    call(m)
                    call(m)
                once = timed(lambda: call(batched), 1)
                n = max(1, min(50, int(0.3 / max(once, 1e-6))))
                times = {k: [] for k in models}
                for r in range(REPEATS):
                    order = list(models) if r % 2 == 0 else list(models)[::-1]
                    for k in order:
                        times[k].append(timed(lambda: call(models[k]), n))
                ratios = [u / b for u, b in zip(times["unbatched"], times["batched"])]
                print(f"{name:13s} B={B:<4d} {mode:8s} batched {min(times['batched'])*1e3:9.2f} ms  "
                      f"unbatched {min(times['unbatched'])*1e3:9.2f} ms  unbatched/batched median "
                      f"{statistics.median(ratios):.3f} [{min(ratios):.3f}, {max(ratios):.3f}] (n={n})", flush=True)


if __name__ == "__main__":
    main()
