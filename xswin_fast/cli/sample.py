"""``sample.py``: images from a train.py checkpoint (EMA weights by default).

    python sample.py --ckpt results/000-XSwin-digits                   # newest checkpoint of the run
    python sample.py --ckpt results/000-XSwin-S-2/checkpoints/0400000.pt --num-samples 64 \\
        --labels 207,360,387,974 --cfg-scale 4.0 --sampler ddim --steps 50 --seed 1
    python sample.py --ckpt results/002-XSwin-digits --sampler heun --steps 10 --cfg-interval 0 0.7  # a flow run
    python sample.py --ckpt results/003-SiT-run --sampler sde --steps 250 --cfg-scale 1.5 --guided-channels 3  # SiT's FID setting
    python sample.py --ckpt results/003-SiT-run --sampler dopri5 --atol 1e-6 --rtol 1e-3  # SiT's ODE setting
    python sample.py --ckpt results/004-DiT-digits --prompt "a pair of trousers" --prompt "a sneaker" \
        --negative-prompt "a blurry picture" --cfg-scale 3 --num-samples 16    # a text-to-image (--captions) run

Writes ``grid.png`` and one PNG per image under ``images/`` (the folder FID tools read) plus
``labels.json`` (``prompts.json`` for a text-to-image run) into ``--out`` (default: RUN_DIR/samples-<step>-<sampler><steps>-cfg<scale>-seed<seed>).
The sampler follows the run's saved objective: DDPM/DDIM for eps runs, Euler/Heun/SDE/dopri5 for flow runs.
"""
import argparse
import json
from pathlib import Path
from typing import List, Optional, Union

from ..objectives.eps import PRECISIONS, autocast_dtype
from ..objectives import ALL_SAMPLERS
from ..objectives.flow import ADAPTIVE_SAMPLERS, SDE_DEFAULT_STEPS
from ..objectives.flow_solvers import DOPRI5_ATOL, DOPRI5_RTOL
from ..objectives.guidance import GuidanceInterval, TextCondition, as_interval, encode_prompts
from ..ops.dispatch import interpreter_active
from ..images import save_grid, save_pngs
from ..runs.config import BACKEND_CHOICES, ConfigError, op_backend, parse_threads
from ..runs.run_dir import SamplingRun, load_run
from ..objectives.sampling import DEFAULT_CFG_SCALE, generate
from .process import apply_threads, log_to_stdout, progress_mode
from .user_errors import (ArgumentParser, exit_on_user_error, finite_float, non_negative_int, output_folder, positive_float,
                          positive_int)


def parse_labels(spec: Optional[str], n: int, classes: List[str]) -> List[int]:
    """Comma-separated class indices or names, repeated to ``n``; default: cycle through all classes."""
    if spec is None:
        return [i % len(classes) for i in range(n)]
    if not spec.strip():
        raise ConfigError("--labels is empty: give comma-separated class indices or names, or leave it out for all classes")
    out = []
    for tok in spec.split(","):
        tok = tok.strip()
        if tok in classes and not tok.isdigit():
            out.append(classes.index(tok))
        else:
            try:
                v = int(tok)
            except ValueError:
                raise ConfigError(f"--labels: unknown label {tok!r}; classes are: {', '.join(classes[:20])}{' ...' if len(classes) > 20 else ''}")
            if not 0 <= v < len(classes):
                raise ConfigError(f"--labels: label {v} out of range [0, {len(classes)})")
            out.append(v)
    return [out[i % len(out)] for i in range(n)]


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="sample.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint file, a run / checkpoints dir (newest checkpoint), or a model folder (export_run)")
    p.add_argument("--num-samples", type=positive_int, default=100, help="images to generate")
    p.add_argument("--labels", help="comma-separated class indices or names, repeated to --num-samples; default: all classes in turn")
    p.add_argument("--prompt", action="append", default=None,
                   help="text-to-image runs: a prompt; repeat the flag for several, cycled to --num-samples")
    p.add_argument("--negative-prompt", default=None,
                   help="text-to-image runs: guidance pushes away from this prompt instead of the null caption")
    p.add_argument("--cfg-scale", type=finite_float, default=DEFAULT_CFG_SCALE,
                   help=f"classifier-free guidance scale (1 = off; default {DEFAULT_CFG_SCALE}, as evaluate.py and train.py's grids)")
    add_sampler_flags(p)
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--no-ema", action="store_true", help="use the raw model weights instead of the EMA")
    p.add_argument("--device", default=None, help="auto (default: cuda if available, else cpu), cpu, cuda, cuda:N")
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help="auto = bf16 autocast on CUDA")
    p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES)
    p.add_argument("--threads", type=parse_threads, default="auto",
                   help="CPU threads: N, 0 (torch's default) or auto (one when the load average shows other work)")
    p.add_argument("--nrow", type=positive_int, default=None, help="images per grid row (default: number of classes if <= 32)")
    p.add_argument("--out", default=None, help="output folder")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="tqdm bar (default: when stderr is a terminal); otherwise progress lines on stdout")
    return p


def add_sampler_flags(group) -> None:
    """--sampler, --steps, --atol/--rtol, --cfg-interval and --guided-channels (shared with
    evaluate.py); their defaults depend on the run's objective and are filled in by
    :func:`check_generation`."""
    group.add_argument("--sampler", default=None, choices=ALL_SAMPLERS,
                       help="eps runs: ddpm (respaced, learned variance; default) or ddim (eta 0); flow runs: euler "
                            "(default), heun (2nd order, two model calls per step), sde (SiT's Euler-Maruyama, its FID "
                            "sampler) or dopri5 (adaptive, --atol and --rtol; SiT's ODE)")
    group.add_argument("--steps", type=positive_int, default=None,
                       help=f"sampling steps; default 250 for eps runs (DiT: 250 DDPM), 25 for flow runs, "
                            f"{SDE_DEFAULT_STEPS} for sde; not for dopri5")
    group.add_argument("--atol", type=positive_float, default=None,
                       help=f"dopri5's absolute error tolerance per step (default {DOPRI5_ATOL:g}, SiT's); dopri5 only")
    group.add_argument("--rtol", type=positive_float, default=None,
                       help=f"dopri5's relative error tolerance per step (default {DOPRI5_RTOL:g}, SiT's); dopri5 only")
    interval = group.add_mutually_exclusive_group()
    interval.add_argument("--cfg-interval", type=finite_float, nargs=2, metavar=("LO", "HI"), default=None,
                          help="guide only at noise levels t in (LO, HI] (0 = data, 1 = pure noise: t/T for eps, t for "
                               "flow); default: every step")
    interval.add_argument("--cfg-interval-sigma", type=finite_float, nargs=2, metavar=("LO", "HI"), default=None,
                          help="the same in the paper's sigma (Kynkaanniemi et al. 2024): sigma = t / (1 - t) for flow, "
                               "sqrt((1 - alphabar_t) / alphabar_t) for eps; e.g. 0.28 5.42")
    group.add_argument("--guided-channels", type=positive_int, default=None,
                       help="guide only the first N channels (SiT and DiT as released: 3 of 4); default: all")


def generation_tag(args: argparse.Namespace) -> str:
    """"<sampler><steps>[-tol<atol>-<rtol>]-cfg<scale>[-gc<n>][-int<lo>-<hi>]-seed<seed>[-raw]" of
    output folder names (the tolerances where they are not dopri5's defaults)."""
    i = args.cfg_interval
    interval = f"-int{'s' if i.unit == 'sigma' else ''}{i.lo:g}-{i.hi:g}" if i else ""
    guided = f"-gc{args.guided_channels}" if args.guided_channels else ""
    tol = args.atol is not None and (args.atol, args.rtol) != (DOPRI5_ATOL, DOPRI5_RTOL)
    tolerances = f"-tol{args.atol:g}-{args.rtol:g}" if tol else ""
    return (f"{args.sampler}{args.steps or ''}{tolerances}-cfg{args.cfg_scale:g}{guided}{interval}-seed{args.seed}"
            f"{'-raw' if args.no_ema else ''}")


def generate_images(args: argparse.Namespace, run: SamplingRun, labels: Union[List[int], TextCondition]):
    """``generate`` with the generation flags (shared with evaluate.py): (N, C, H, W) uint8 images."""
    return generate(
        run.model, run.objective, labels, run.latent_shape, codec=run.codec, sampler=args.sampler, steps=args.steps,
        cfg_scale=args.cfg_scale, cfg_interval=args.cfg_interval, guided_channels=args.guided_channels,
        ode_options={"atol": args.atol, "rtol": args.rtol} if args.sampler in ADAPTIVE_SAMPLERS else None,
        seed=args.seed, batch_size=args.batch_size,
        autocast_dtype=autocast_dtype(args.precision, run.device), progress=progress_mode(args.progress),
    )


def check_generation(args: argparse.Namespace, run: SamplingRun) -> None:
    """The generation flags that depend on the checkpoint, checked (and --sampler, --steps,
    --atol, --rtol defaulted from the run's objective and sampler) before any sampling."""
    objective = run.objective
    args.sampler = args.sampler or objective.default_sampler
    if args.sampler not in objective.samplers:
        raise ConfigError(f"--sampler {args.sampler} does not fit the run's {objective.name} objective: use one of "
                          f"{', '.join(objective.samplers)}")
    if args.sampler in ADAPTIVE_SAMPLERS:
        if args.steps is not None:
            raise ConfigError(f"--steps does not apply to --sampler {args.sampler}: it chooses its own steps (adaptive)")
        args.atol = DOPRI5_ATOL if args.atol is None else args.atol
        args.rtol = DOPRI5_RTOL if args.rtol is None else args.rtol
    else:
        for flag in ("atol", "rtol"):
            if getattr(args, flag) is not None:
                raise ConfigError(f"--{flag} applies only to the adaptive --sampler {', '.join(ADAPTIVE_SAMPLERS)}, "
                                  f"not to {args.sampler} (fixed steps: --steps)")
        args.steps = args.steps or (SDE_DEFAULT_STEPS if args.sampler == "sde" else objective.default_steps)
    check_guidance_flags(args, run)
    if args.steps is not None and args.steps > run.objective.num_timesteps:
        raise ConfigError(f"--steps must be at most the run's {run.objective.num_timesteps} training timesteps, got {args.steps}")
    if run.text_encoder is not None:
        if args.cfg_scale != 1 and not run.args.get("caption_dropout"):
            raise ConfigError(f"--cfg-scale {args.cfg_scale:g} needs a model trained with --caption-dropout above 0; "
                              "use --cfg-scale 1")
        if args.negative_prompt is not None and args.cfg_scale == 1:
            raise ConfigError("--negative-prompt acts through guidance: give a --cfg-scale other than 1")
    elif args.cfg_scale != 1 and getattr(getattr(run.model, "y_embedder", None), "dropout_prob", 0) <= 0:
        raise ConfigError(f"--cfg-scale {args.cfg_scale:g} needs a model trained with class dropout; use --cfg-scale 1")


def check_guidance_flags(args: argparse.Namespace, run: SamplingRun) -> None:
    """--cfg-interval / --cfg-interval-sigma into ``args.cfg_interval`` (a GuidanceInterval or
    None), and --guided-channels checked against the model."""
    t, sigma = args.cfg_interval, getattr(args, "cfg_interval_sigma", None)
    flag = "--cfg-interval-sigma" if sigma is not None else "--cfg-interval"
    spec = GuidanceInterval(*sigma, unit="sigma") if sigma is not None else GuidanceInterval(*t) if t is not None else None
    try:
        args.cfg_interval = as_interval(spec)
    except ValueError as exc:
        raise ConfigError(f"{flag}: {exc}") from None
    n = args.guided_channels
    if n is not None:
        if args.cfg_scale == 1:
            raise ConfigError("--guided-channels needs guidance: a --cfg-scale other than 1")
        if n > run.model.in_channels:
            raise ConfigError(f"--guided-channels must be at most the model's {run.model.in_channels} input channels, got {n}")


def check_backend(args: argparse.Namespace, run: SamplingRun) -> None:
    """--backend triton where Triton cannot run (a CPU without TRITON_INTERPRET=1): one line now,
    not a traceback from the first kernel."""
    if args.backend == "triton" and run.device.type != "cuda" and not interpreter_active():
        raise ConfigError(f"--backend triton needs a CUDA device, and the run loads on {run.device} "
                          "(use --backend auto or torch, or set TRITON_INTERPRET=1 to interpret the kernels on the CPU)")


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    with exit_on_user_error("sample.py"):
        return _sample(args)


def _sample(args: argparse.Namespace) -> int:
    output_folder(args.out)
    apply_threads(args.threads)
    log_to_stdout()
    run = load_run(args.ckpt, args.device, use_ema=not args.no_ema, backend=op_backend(args.backend))
    check_backend(args, run)
    check_generation(args, run)
    if run.text_encoder is not None:
        return _sample_prompts(args, run)
    if args.prompt or args.negative_prompt is not None:
        raise ConfigError(f"--{'prompt' if args.prompt else 'negative-prompt'} needs a text-to-image run (trained with "
                          "--captions); this run is class-conditional: use --labels")
    classes = run.data["classes"]
    labels = parse_labels(args.labels, args.num_samples, classes)
    images = generate_images(args, run, labels)
    out = _out_folder(args, run)
    nrow = args.nrow or (len(classes) if len(classes) <= 32 else None)
    grid = save_grid(images, out / "grid.png", nrow=nrow)
    save_pngs(images, out / "images", names=[f"{i:06d}_c{lab}.png" for i, lab in enumerate(labels)])
    (out / "labels.json").write_text(json.dumps({"labels": labels, "classes": classes}))
    print(f"wrote {len(labels)} images to {out / 'images'} and the grid {grid}")
    return 0


def _out_folder(args: argparse.Namespace, run: SamplingRun) -> Path:
    out = Path(args.out) if args.out else run.run_dir / f"samples-{run.step:07d}-{generation_tag(args)}"
    out.mkdir(parents=True, exist_ok=True)
    return out


def _sample_prompts(args: argparse.Namespace, run: SamplingRun) -> int:
    """sample.py of a text-to-image run: --prompt (cycled to --num-samples) and --negative-prompt."""
    if args.labels is not None:
        raise ConfigError("--labels needs a class-conditional run; this run is text-to-image: use --prompt")
    if not args.prompt or any(not p.strip() for p in args.prompt):
        raise ConfigError("this run is text-to-image (trained with --captions): give --prompt \"...\" (non-empty; repeat "
                          "the flag for several prompts)")
    prompts = [args.prompt[i % len(args.prompt)] for i in range(args.num_samples)]
    condition = encode_prompts(run.text_encoder, prompts, args.negative_prompt, run.device)
    images = generate_images(args, run, condition)
    out = _out_folder(args, run)
    nrow = args.nrow or (len(args.prompt) if len(args.prompt) <= 32 else None)
    grid = save_grid(images, out / "grid.png", nrow=nrow)
    save_pngs(images, out / "images", names=[f"{i:06d}_p{i % len(args.prompt)}.png" for i in range(len(prompts))])
    (out / "prompts.json").write_text(json.dumps({"prompts": prompts, "negative_prompt": args.negative_prompt}))
    print(f"wrote {len(prompts)} images to {out / 'images'} and the grid {grid}")
    return 0
