"""The stratified train / held-out split (the held-out part is what evaluate.py compares against)."""
from typing import List, Sequence, Tuple

import numpy as np


def stratified_split(labels: Sequence[int], eval_fraction: float, seed: int) -> Tuple[List[int], List[int]]:
    """Per-class random split: round(fraction * n_c) of each class (at least one, and never the
    whole class) goes to eval. Returns sorted (train, eval) indices into ``labels``."""
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval fraction must be in [0, 1), got {eval_fraction}")
    labels = np.asarray(labels)
    if eval_fraction == 0.0:
        return list(range(len(labels))), []
    rng = np.random.default_rng(seed)
    train, held = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_eval = int(round(len(idx) * eval_fraction))
        if len(idx) > 1:
            n_eval = min(max(n_eval, 1), len(idx) - 1)
        else:
            n_eval = 0
        held += idx[:n_eval].tolist()
        train += idx[n_eval:].tolist()
    return sorted(train), sorted(held)
