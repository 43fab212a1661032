"""Text-to-image end to end on the CPU: captions written from Fashion-MNIST's labels, a text model
trained from them with the all-MiniLM-L6-v2 encoder, sampled from prompts in words it never saw,
and scored for prompt alignment (docs/text_to_image.md).

    python experiments/text_to_image.py --out results/text-to-image --results docs/results/text-to-image

1. Writes a captioned folder (``metadata.jsonl``, three captions per image from six sentence
   templates) of ``--per-class`` training images per class at 16 px.
2. Trains ``--model`` once per ``--fusions`` entry (separate MHCA, GLIDE's fused attention) with
   the same recipe and seed; a finished run is not retrained, an interrupted one resumes.
3. Samples ``--samples-per-class`` images per class from prompts in the held-out templates
   (``HELD_OUT_TEMPLATES``: no training caption uses them), at each guidance scale of
   ``--cfg``, and scores prompt alignment: the accuracy of the project's Fashion-MNIST classifier
   (``fashion_extractor``) on the prompt's class. The same for prompts in the training templates,
   and for the null caption (chance level) as a floor.
4. Writes, per fusion, ``results-<fusion>.json`` (every number, the command, commit and machine)
   and a grid of held-out prompts (one class per column) with its prompts beside it, into
   ``--results``. The fusions may run as two processes (``--fusions separate`` and ``--fusions fused``).
"""
import argparse
import json
import random
import re
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from experiment_common import check_folders, git_commit, machine_description, train_to, write_json
from xswin_fast.cli.user_errors import ArgumentParser, exit_on_user_error, finite_float, positive_int
from xswin_fast.data import FashionMNISTDataset, write_captioned_folder
from xswin_fast.data.captions import HELD_OUT_TEMPLATES, TEMPLATES, class_phrases
from xswin_fast.data.fashion_mnist import CLASSES
from xswin_fast.evaluation.fashion_extractor import load_fashion_cnn, to_extractor_size
from xswin_fast.images import save_grid
from xswin_fast.objectives import generate
from xswin_fast.objectives.guidance import TextCondition
from xswin_fast.runs.run_dir import load_run

KIND = "fashion-mnist"
PROG = "text_to_image.py"


def parse_args(argv):
    p = ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results/text-to-image", help="run folders and the captioned data")
    p.add_argument("--results", default="docs/results/text-to-image", help="results.json and the grids")
    p.add_argument("--model", default="DiT-digits", help="a family with both fusions (DiT, UViT, IU-ViT)")
    p.add_argument("--fusions", nargs="+", default=["separate", "fused"], choices=("separate", "fused"))
    p.add_argument("--per-class", type=positive_int, default=600, help="training images per class")
    p.add_argument("--steps", type=positive_int, default=1000)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--lr", type=finite_float, default=1e-3)
    p.add_argument("--caption-dropout", type=finite_float, default=0.1)
    p.add_argument("--objective", default="eps", choices=("eps", "flow"))
    p.add_argument("--samples-per-class", type=positive_int, default=50)
    p.add_argument("--cfg", type=finite_float, nargs="+", default=[1.0, 3.0])
    p.add_argument("--sample-steps", type=positive_int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument("--write-data-only", action="store_true", help="write the captioned folder and stop (before two processes)")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST's IDX files (default: Debian's dataset-fashion-mnist)")
    return p.parse_args(argv)


def write_data(out: Path, args) -> Path:
    """The captioned folder of ``--per-class`` training images per class (once; reused after)."""
    folder = out / f"fashion-mnist-captions-{args.per_class}"
    if (folder / "metadata.jsonl").is_file():
        return folder
    full = FashionMNISTDataset(args.data_dir, "train", image_size=16)
    rng = np.random.default_rng(args.seed)
    targets = np.asarray(full.all_targets)
    chosen = np.sort(np.concatenate([rng.permutation(np.flatnonzero(targets == c))[: args.per_class] for c in range(10)]))
    images = full.uint8_images()[chosen, 0].numpy()
    return write_captioned_folder(str(folder), images, targets[chosen].tolist(), KIND, seed=args.seed)


def prompts_for(templates: Sequence[str], n_per_class: int, seed: int) -> Tuple[List[str], List[int]]:
    """``n_per_class`` prompts per class cycling through ``templates`` x the class's names."""
    rng, prompts, labels = random.Random(seed), [], []
    for c in range(10):
        options = [t.format(p) for t in templates for p in class_phrases(KIND, c)]
        rng.shuffle(options)
        prompts += [options[i % len(options)] for i in range(n_per_class)]
        labels += [c] * n_per_class
    return prompts, labels


def alignment(run, classifier, prompts: List[str], labels: List[int], cfg: float, args, null: bool = False) -> Dict:
    """Samples of ``prompts`` (or null captions) and the classifier's accuracy on ``labels``."""
    emb = run.text_encoder.encode(prompts).to(run.device, torch.float32)
    cond = TextCondition(emb.with_null_rows(torch.full((len(prompts),), null)))
    began = time.perf_counter()
    images = generate(run.model, run.objective, cond, run.latent_shape, sampler="ddim" if run.objective.name == "eps" else "euler",
                      steps=args.sample_steps, cfg_scale=1.0 if null else cfg, seed=args.seed, batch_size=250)
    x = to_extractor_size(images.float() / 127.5 - 1)
    with torch.no_grad():
        predicted = classifier(x)[1].argmax(1)
    hits = (predicted == torch.tensor(labels)).float()
    per_class = [float(hits[torch.tensor(labels) == c].mean()) for c in range(10)]
    return dict(cfg=cfg, accuracy=float(hits.mean()), per_class=per_class, num_samples=len(prompts),
                sample_seconds=time.perf_counter() - began), images


def train_run(out: Path, data: Path, fusion: str, args) -> Tuple[Path, Dict]:
    run = out / f"{args.model}-{fusion}-{args.objective}-seed{args.seed}"
    new = dict(captions=str(data), model=args.model, model_kwargs={"patch_size": 2, "text_fusion": fusion}, vae=None,
               image_size=16, global_seed=args.seed, global_batch_size=args.batch_size, lr=args.lr, lr_warmup_steps=100,
               lr_schedule="constant", ema_decay=0.9999, ema_warmup=True, objective=args.objective,
               caption_dropout=args.caption_dropout, eval_fraction=0.0, sample_every=0, sample_num=20, sample_steps=25,
               sample_sampler="ddim" if args.objective == "eps" else "euler", sample_cfg=3.0, ckpt_every=500,
               log_every=100, progress=False, num_workers=1)
    session = train_to(run, args.steps, new, dict(threads=args.threads, device="cpu"), PROG)
    return run, session


def training_seconds(run_dir: Path) -> Dict:
    """Steps and seconds of every training session in the run's log (a resumed run has several)."""
    sessions = [(int(m.group(1)), float(m.group(2))) for m in re.finditer(r"(\d+) steps in ([\d.]+) s", (run_dir / "log.txt").read_text())]
    return dict(steps=sum(n for n, _ in sessions), seconds=sum(s for _, s in sessions), sessions=len(sessions))


def evaluate_run(run_dir: Path, fusion: str, args, classifier, results: Path) -> Dict:
    run = load_run(str(run_dir), "cpu")
    held_prompts, held_labels = prompts_for(HELD_OUT_TEMPLATES[KIND], args.samples_per_class, args.seed)
    seen_prompts, seen_labels = prompts_for(TEMPLATES[KIND], args.samples_per_class, args.seed)
    training_captions = set(json.loads(line)["text"][i] for line in open(Path(run.args["captions"]) / "metadata.jsonl")
                            for i in range(len(json.loads(line)["text"])))
    unseen = [p for p in held_prompts if p not in training_captions]
    if len(unseen) != len(held_prompts):
        raise SystemExit(f"{PROG}: {len(held_prompts) - len(unseen)} held-out prompts occur in the training captions")
    held, seen = [], []
    for cfg in args.cfg:
        point, images = alignment(run, classifier, held_prompts, held_labels, cfg, args)
        held.append(point)
        if cfg == max(args.cfg):
            write_grid(images, held_prompts, results / f"grid-{fusion}.png", args.samples_per_class)
        seen.append(alignment(run, classifier, seen_prompts, seen_labels, cfg, args)[0])
    floor = alignment(run, classifier, held_prompts, held_labels, 1.0, args, null=True)[0]
    return dict(held_out_prompts=held, training_template_prompts=seen, null_caption=floor)


def write_grid(images: torch.Tensor, prompts: List[str], path: Path, per_class: int, rows: int = 8) -> None:
    """The first ``rows`` samples of each class, one class per column, and its prompts (row by row)."""
    order = [c * per_class + r for r in range(min(rows, per_class)) for c in range(10)]
    save_grid(images[order], path, nrow=10)
    lines = [f"row {r + 1}: " + " | ".join(prompts[c * per_class + r] for c in range(10)) for r in range(min(rows, per_class))]
    path.with_suffix(".txt").write_text(f"columns: {', '.join(CLASSES)}\n" + "\n".join(lines) + "\n")


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    with exit_on_user_error(PROG):
        check_folders(args, "out", "results")
        out, results = Path(args.out), Path(args.results)
        torch.set_num_threads(args.threads)
        data = write_data(out, args)
        if args.write_data_only:
            print(f"wrote {data}")
            return 0
        classifier = load_fashion_cnn(data_dir=args.data_dir)
        report = dict(command="python experiments/text_to_image.py " + " ".join(sys.argv[1:] if argv is None else argv),
                      commit=git_commit(), machine=machine_description("cpu"), data=dict(folder=data.name, per_class=args.per_class,
                      templates=TEMPLATES[KIND], held_out_templates=HELD_OUT_TEMPLATES[KIND]))
        results.mkdir(parents=True, exist_ok=True)
        for fusion in args.fusions:  # one file per fusion: two processes may run one fusion each
            path = results / f"results-{fusion}.json"
            run_dir, session = train_run(out, data, fusion, args)
            if session is None and path.is_file():  # a finished run keeps the record of its training
                session = json.loads(path.read_text())["training_session"]
            scores = evaluate_run(run_dir, fusion, args, classifier, results)
            write_json(path, dict(report, fusion=fusion, run=run_dir.name, training_session=session,
                                  training=training_seconds(run_dir), **scores))
            print(f"{fusion}: held-out prompt alignment " + ", ".join(
                f"cfg {p['cfg']:g}: {p['accuracy']:.3f}" for p in scores["held_out_prompts"])
                + f" (null caption {scores['null_caption']['accuracy']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
