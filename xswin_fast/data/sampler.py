"""The resumable distributed sampler, and the flip convention every dataset here shares.

A dataset of ``N`` base items accepts indices in ``[0, 2N)``: index ``i + N`` is item ``i``
flipped horizontally. The sampler draws the flips (from the seed and the epoch), so augmentation
is a pure function of (seed, epoch, position): a resumed run sees the very same images, flips
included, whatever the number of loader workers.
"""
from typing import Tuple

import torch
from torch.utils.data import Dataset, DistributedSampler


def unflip_index(index: int, n: int) -> Tuple[int, bool]:
    """Sampler index ``index`` of a dataset of ``n`` base items -> (base item, flipped?)."""
    if not 0 <= index < 2 * n:
        raise IndexError(f"index {index} out of range for {n} items (x2 for flips)")
    return (index - n, True) if index >= n else (index, False)


class ResumableDistributedSampler(DistributedSampler):
    """DistributedSampler that can start mid-epoch and draws horizontal flips.

    ``set_epoch(epoch, start_batch, batch_size)`` skips the first ``start_batch`` batches of this
    rank's share of the epoch, so a resumed run continues the exact data order. With ``hflip``
    every index i becomes ``i + len(dataset)`` with probability 1/2 (the dataset flips it); the
    flips depend only on (seed, epoch, i), identical on every rank.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, shuffle: bool = True, seed: int = 0, hflip: bool = False):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.hflip = hflip
        self.start_index = 0

    def set_epoch(self, epoch: int, start_batch: int = 0, batch_size: int = 1) -> None:
        super().set_epoch(epoch)
        self.start_index = start_batch * batch_size

    def __iter__(self):
        indices = list(super().__iter__())
        n = len(self.dataset)
        if self.hflip:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch + 0x5DEECE66D)
            flips = torch.randint(0, 2, (n,), generator=g).tolist()
            indices = [i + n if flips[i] else i for i in indices]
        return iter(indices[self.start_index :])

    def __len__(self) -> int:
        return self.num_samples - self.start_index
