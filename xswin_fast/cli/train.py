"""``train.py``: class-conditional diffusion training, from one CPU to many GPUs with torchrun.

    python train.py                                   # the built-in job: digits, pixel space, CPU
    python train.py --data /data/caltech101 --image-size 64 --model XSwin-paper --vae ema
    torchrun --nproc_per_node 8 train.py --data /data/imagenet/train --model XSwin-S/2
    python train.py --resume results/000-XSwin-S-2    # continue exactly where it stopped

Without ``--data`` the run trains a small XSwin on scikit-learn's bundled handwritten digits
(1,797 8x8 images, 10 classes, no download) in pixel space and writes ``samples.png`` and
``loss.png`` into the run directory. See docs/training.md for every flag.
"""
import sys
from typing import List, Optional

from ..checkpoints import CheckpointError, check_train_checkpoint, load_newest_checkpoint
from ..runs.config import new_run_config, parse_flags, resume_config
from ..runs.launch import train
from ..runs.trainer import READABLE_FORMATS
from .user_errors import ArgumentParser, exit_on_user_error


def main(argv: Optional[List[str]] = None) -> int:
    flags = parse_flags(sys.argv[1:] if argv is None else argv, description=__doc__, parser_class=ArgumentParser)
    with exit_on_user_error("train.py"):
        if not flags.get("resume"):
            return train(new_run_config(flags))
        try:
            path, ckpt = load_newest_checkpoint(flags["resume"])
        except CheckpointError as exc:
            raise CheckpointError(f"cannot resume: {exc}") from exc
        if ckpt.get("format") not in READABLE_FORMATS:
            raise CheckpointError(f"cannot resume from {path}: not a train.py checkpoint (format {ckpt.get('format')!r})")
        check_train_checkpoint(ckpt, path)
        return train(resume_config(ckpt["args"], flags, path), ckpt)
