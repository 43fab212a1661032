"""Model groups: training step and sampling step throughput (images/s) and peak memory of XSwin,
USwin, DiT and UViT presets of matched size, at 256, 512 and 1024 px (latents 32, 64, 128), of the
latent DiffiT-XL/2 at 256 px, and of the pixel-space DiffiT, ASCEND and IU-ViT presets at their own
image sizes (groups ``model-<kind>-px<N>``; on a GPU, or on the CPU with ``--bench-cpu-full``;
the quick CPU run has DiffiT-CIFAR10 at 16 px).

* ``train``: forward + backward + AdamW step on a batch (MSE to a random target), train mode;
* ``sample``: one forward (eval mode, no grad) on a batch, as in a sampler's denoising step;
* ``sample-cfg``: ``forward_with_cfg`` on the conditional + unconditional halves (the model runs
  2 x batch); images/s counts the batch of guided images.

On a GPU: bf16 autocast (fp32 master weights), the ``torch`` backend (reference ops) and the
``triton`` backend (automatic dispatch on CUDA: the Triton kernel of every op that has one,
listed in ``extra_info["triton_ops"]``). On the CPU: fp32, torch backend, S presets at a small
latent and DiffiT-CIFAR10 at 16 px (the quick run). DiT and UViT carry a fixed sin-cos pos_embed and are built for the
latent size; XSwin/USwin run at any size and are built with the same ``input_size``.

Forward GFLOPs per image come from ``xswin_fast.flops.forward_flops`` (FlopCounterMode with
attention counted under the MATH SDPA backend, on the meta device) and sit beside each result;
achieved TFLOP/s counts 3x forward for a training step (backward = 2x forward).

Before timing, each case checks its output (backend and precision as benchmarked) and, for the
training step on the Triton backend, all parameter gradients of that backend in fp32, against
the fp32 torch-backend reference of the same weights in eval mode (dropout and stochastic depth
off), by relative L2 error. Zero-initialised layers (adaLN, output heads) are given small random
weights first, so the check is not of zeros.
"""
import functools
import sys

import pytest
import torch

import benchutils as bu
from xswin_fast import create_model
from xswin_fast.models.registry import DIGITS_PRESETS, PIXEL_PRESETS, PRESETS
from xswin_fast.flops import count_parameters, forward_flops

FAMILIES = ("XSwin", "USwin", "DiT", "UViT")
# the papers' pixel-space presets (3 channels, no VAE), each at its own input_size; not the digits
PAPER_PIXEL_PRESETS = tuple(name for name in PIXEL_PRESETS if name not in DIGITS_PRESETS)
GPU_SIZES, CPU_SIZES = ("S", "B"), ("S",)
GPU_LATENTS, CPU_LATENTS = (32, 64, 128), (16,)
# images per step on a GPU (the same for every model at a latent size); the CPU uses 1
GPU_BATCH = {32: 64, 64: 32, 128: 8}
CFG_SCALE = 4.0
KINDS = ("train", "sample", "sample-cfg")


def _csv(value, default, cast=str):
    return tuple(cast(v) for v in value.split(",")) if value else default


def pytest_generate_tests(metafunc):
    if "model_name" not in metafunc.fixturenames:
        return
    on_gpu = torch.cuda.is_available()
    cpu_full = metafunc.config.getoption("--bench-cpu-full")
    sizes = _csv(metafunc.config.getoption("--bench-model-sizes"), GPU_SIZES if on_gpu or cpu_full else CPU_SIZES)
    latents = _csv(metafunc.config.getoption("--bench-latents"), GPU_LATENTS if on_gpu or cpu_full else CPU_LATENTS, int)
    cases = [(f"{fam}-{size}/2", latent) for size in sizes for fam in FAMILIES for latent in latents]
    if on_gpu or cpu_full:
        cases += [("DiffiT-latent-XL/2", 32)] + [(name, PRESETS[name][1]["input_size"]) for name in PAPER_PIXEL_PRESETS]
    else:
        cases += [("DiffiT-CIFAR10", 16)]
    ids = [f"{n}-{'px' if n in PIXEL_PRESETS else 'lat'}{lat}" for n, lat in cases]
    metafunc.parametrize(("model_name", "latent"), cases, ids=ids)


@functools.lru_cache(maxsize=None)
def model_facts(name: str, latent: int):
    """(forward FLOPs per image, parameters, ops of xswin_fast.ops the model dispatches)."""
    with torch.device("meta"):
        model = create_model(name, input_size=latent)
    flops = forward_flops(model, latent)
    return flops, count_parameters(model), ops_used(model, latent)


def ops_used(model, latent):
    """Names of the xswin_fast.ops ops one forward dispatches (spied on the meta device)."""
    from xswin_fast.ops import dispatch

    seen = set()
    original = dispatch.use_triton

    def spy(op, *args):
        seen.add(op)
        return original(op, *args)

    patched = [m for m in list(sys.modules.values()) if m is not None and getattr(m, "__name__", "").startswith("xswin_fast.ops") and getattr(m, "use_triton", None) is original]
    for m in patched:
        m.use_triton = spy
    try:
        x = torch.zeros(2, model.in_channels, latent, latent, device="meta")
        with torch.no_grad():
            model.eval()(x, torch.zeros(2, device="meta"), torch.zeros(2, dtype=torch.long, device="meta"))
    except Exception:
        pass
    finally:
        for m in patched:
            m.use_triton = original
    return tuple(sorted(seen))


def randomise_zero_init(model):
    """Give zero-initialised weights (adaLN, output heads) small values: non-trivial outputs."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and p.abs().max() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def make_batch(env, model, B, latent, kind):
    n = 2 * B if kind == "sample-cfg" else B
    x = torch.randn(n, model.in_channels, latent, latent, device=env.device)
    t = torch.randint(0, 1000, (n,), device=env.device)
    y = torch.randint(0, model.num_classes, (n,), device=env.device)
    if kind == "sample-cfg":
        y[B:] = model.num_classes  # the null class
    target = torch.randn(n, model.out_channels, latent, latent, device=env.device) if kind == "train" else None
    return x, t, y, target


def run_model(model, kind, x, t, y, autocast_dtype, device_type):
    ctx = torch.autocast(device_type, dtype=autocast_dtype) if autocast_dtype else torch.autocast(device_type, enabled=False)
    with ctx:
        if kind == "sample-cfg":
            return model.forward_with_cfg(x, t, y, CFG_SCALE)
        return model(x, t, y)


def check_against_reference(model, kind, batch, env, backend, autocast_dtype):
    """Check the benchmarked configuration against the fp32 torch-backend reference (eval mode).

    * the output under the benchmarked backend and precision (bf16 autocast on a GPU), by
      relative L2 error (``MODEL_TOL``);
    * for ``train`` with the Triton backend, every parameter gradient of that backend in fp32
      (``MODEL_GRAD_TOL``): the backend's backward is what can be wrong, and fp32 keeps the
      check tight (bf16 autocast alone moves XSwin's gradients by ~10 %, DiT's by < 1 %).

    Returns the largest error, or a note when the configuration is the reference itself.
    """
    x, t, y, target = batch
    dev = env.device.type
    if backend == "torch" and autocast_dtype is None:
        return "identical to the reference configuration (fp32, torch backend)"
    bench_backend = backend_mode(backend, env)
    was_training = model.training
    model.eval()

    def run(bk, ac, grads: bool):
        model.set_backend(bk)
        model.zero_grad(set_to_none=True)
        with torch.set_grad_enabled(grads):
            out = run_model(model, kind, x, t, y, ac, dev)
            g = None
            if grads:
                torch.nn.functional.mse_loss(out.float(), target).backward()
                g = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
        return out.detach().float(), g

    try:
        check_grads = kind == "train" and backend != "torch"
        ref_out, ref_grads = run("torch", None, check_grads)
        out, _ = run(bench_backend, autocast_dtype, False)
        err = bu.check_close(f"{kind} output", out, ref_out, bu.MODEL_TOL[autocast_dtype or torch.float32], bu.l2_rel_err)
        if check_grads:
            _, grads = run(bench_backend, None, True)
            err = max(err, bu.check_close(f"{kind} gradients (fp32)", grads, ref_grads, bu.MODEL_GRAD_TOL, bu.l2_rel_err))
        return err
    finally:
        model.zero_grad(set_to_none=True)
        model.set_backend(bench_backend)
        model.train(was_training)


def backend_mode(backend, env):
    # "triton" on a GPU is the automatic dispatch: the kernel wherever it can launch (forcing
    # "triton" would raise for inputs beyond a kernel's limits)
    return "torch" if backend == "torch" else None


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("kind", KINDS)
def test_model(benchmark, bench_env, kind, model_name, latent, backend):
    env = bench_env
    flops, params, used = model_facts(model_name, latent)
    if backend == "triton":
        reason = bu.triton_skip_reason(env)
        if reason:
            pytest.skip(reason)
    pixels = model_name in PIXEL_PRESETS
    benchmark.group = f"model-{kind}-px{latent}" if pixels else f"model-{kind}-lat{latent}"

    B = GPU_BATCH.get(latent, max(1, 2048 // latent)) if env.on_gpu else 1
    autocast_dtype = torch.bfloat16 if env.on_gpu else None
    model = create_model(model_name, input_size=latent)
    randomise_zero_init(model)
    model = model.to(env.device).set_backend(backend_mode(backend, env))
    model.train(kind == "train")
    batches = [make_batch(env, model, B, latent, kind) for _ in range(2)]

    err = check_against_reference(model, kind, batches[0], env, backend, autocast_dtype)
    dev = env.device.type

    if kind == "train":
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **({"fused": True} if env.on_gpu else {}))

        def step(x, t, y, target):
            out = run_model(model, kind, x, t, y, autocast_dtype, dev)
            loss = torch.nn.functional.mse_loss(out.float(), target)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss

    else:

        def step(x, t, y, target):
            with torch.no_grad():
                return run_model(model, kind, x, t, y, autocast_dtype, dev)

    peak = None
    if env.on_gpu:
        step(*batches[0])  # optimizer state exists from here on
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(env.device)
        step(*batches[1])
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated(env.device)

    # a step is milliseconds at least: one call per round, no calibration; the warm-up rounds of
    # pedantic (after the check's and the peak-memory calls) do the rest
    median = bu.run_benchmark(benchmark, env, step, batches, rounds=bu.MODEL_ROUNDS, iterations=1, first_calls=0)

    step_flops = flops * B * (3 if kind == "train" else 2 if kind == "sample-cfg" else 1)

    bu.record(
        benchmark, env, median, bytes_=0, flops=step_flops,
        model=model_name, family=model_name.split("-")[0], size=model_name.split("-")[1].split("/")[0],
        kind=kind, latent=latent, image_px=latent if pixels else latent * 8, batch=B, backend=backend,
        dtype="bf16-autocast" if autocast_dtype else "float32",
        params_M=round(params / 1e6, 3), gflops_per_image=round(flops / 1e9, 3),
        images_per_s=round(B / median, 3) if median else None,
        peak_mem_GiB=round(peak / bu.GiB, 3) if peak is not None else None,
        ops=list(used), triton_ops=sorted(set(used) & bu.registered_triton_ops()) if backend == "triton" else [],
        check_err=err,
    )
    for k in ("bytes", "GBps", "frac_of_copy_bw"):  # a model step has no minimal-bytes model
        benchmark.extra_info.pop(k, None)
