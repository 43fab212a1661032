"""A tiny XSwin trained for a few steps on the digits: shared by the training, sampling and
evaluation tests."""
import json
from pathlib import Path

# tiny backbone overrides for train.py --model-kwargs
TINY = json.dumps({"embed_dim": 16, "depths": [1, 1], "num_heads": [1, 1], "bottleneck_depth": 1})


def train_tiny_digits(run: Path, *extra: str) -> Path:
    """Train it into ``run``; ``extra``: more train.py flags (e.g. "--objective", "flow")."""
    from xswin_fast.cli import train

    rc = train.main([
        "--run-dir", str(run), "--model-kwargs", TINY, "--backend", "torch", "--threads", "1",
        "--global-batch-size", "32", "--max-steps", "4", "--log-every", "2", "--sample-every", "0",
        "--sample-num", "10", "--sample-steps", "2", "--no-progress", *extra,
    ])
    assert rc == 0
    return run
