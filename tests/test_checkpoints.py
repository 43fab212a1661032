"""Checkpoint safety: atomic writes survive a kill mid-write; pickled code is refused; RNG states."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from xswin_fast.checkpoints import (
    CheckpointError,
    capture_rng_state,
    content_checksum,
    load_checkpoint,
    load_newest_checkpoint,
    restore_rng_state,
    save_checkpoint,
)

ROOT = Path(__file__).resolve().parents[1]

KILLER = textwrap.dedent(
    """
    import os, signal, sys, torch
    from xswin_fast import checkpoints as C
    path, mode = sys.argv[1], sys.argv[2]
    if mode == "before-rename":      # the temp file is complete and fsynced, the rename never happens
        os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
    else:                            # killed while torch.save is writing the temp file
        real_save = torch.save
        def torn_save(obj, f, *a, **k):
            f.write(b"PK\\x03\\x04 half a zip archive")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = torn_save
    C.save_checkpoint({"step": 2, "w": torch.full((1000,), 2.0)}, path)
    """
)


@pytest.mark.parametrize("mode", ["mid-write", "before-rename"])
def test_train_checkpoint_kill_during_write_keeps_previous(tmp_path, mode):
    path = tmp_path / "checkpoints" / "0000001.pt"
    save_checkpoint({"step": 1, "w": torch.ones(1000)}, path)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-c", KILLER, str(path), mode], env=env, capture_output=True, timeout=120)
    assert res.returncode == -9, res.stderr.decode()[-2000:]
    ck = load_checkpoint(path)  # the previous checkpoint, intact
    assert ck["step"] == 1 and torch.equal(ck["w"], torch.ones(1000))
    assert load_newest_checkpoint(tmp_path)[0] == path  # leftover temp files are never picked up


def test_train_checkpoint_failure_between_write_and_rename_cleans_up(tmp_path, monkeypatch):
    path = tmp_path / "0000001.pt"
    save_checkpoint({"step": 1}, path)

    def boom(*a):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0000001.pt"]


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_train_checkpoint_with_pickled_code_is_refused(tmp_path):
    evil = _Evil()
    evil.marker = tmp_path / "pwned"
    path = tmp_path / "0000001.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "payload": evil}, path)
    with pytest.raises(CheckpointError, match="pickled"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()
    # a plain object (not code, but not data either) is refused as well
    torch.save({"args": __import__("argparse").Namespace(lr=1e-4)}, path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_train_checkpoint_truncated_file_is_reported(tmp_path):
    path = tmp_path / "0000003.pt"
    save_checkpoint({"step": 3, "w": torch.ones(10)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(path)
    good = tmp_path / "0000002.pt"
    save_checkpoint({"step": 2}, good)
    with pytest.warns(UserWarning, match="skipping unloadable"):
        assert load_newest_checkpoint(tmp_path)[0] == good


def test_train_rng_state_round_trip_is_weights_only(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    state = capture_rng_state()
    save_checkpoint({"rng": state}, tmp_path / "r.pt")
    expect = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expect[0], got[0]) and np.array_equal(expect[1], got[1]) and expect[2] == got[2]


def test_train_checkpoint_with_a_flipped_byte_is_refused_and_skipped(tmp_path):
    good, bad = tmp_path / "0000001.pt", tmp_path / "0000002.pt"
    save_checkpoint({"step": 1, "w": torch.full((1000,), 1.0)}, good)
    save_checkpoint({"step": 2, "w": torch.full((1000,), 2.0)}, bad)
    data = bytearray(bad.read_bytes())
    data[data.find(torch.full((4,), 2.0).numpy().tobytes()) + 2001] ^= 0x10  # one bit of the tensor data
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(bad)
    with pytest.warns(UserWarning, match="skipping unloadable checkpoint.*corrupted"):
        path, ck = load_newest_checkpoint(tmp_path)
    assert path == good and ck["step"] == 1 and torch.equal(ck["w"], torch.ones(1000))


def test_train_checkpoint_checksum_covers_every_value(tmp_path):
    obj = {"step": 3, "rng": {"state": torch.arange(5), "gauss": None}, "args": {"lr": 1e-4, "name": "x"}, "t": (1, 2.5)}
    save_checkpoint(obj, tmp_path / "c.pt")
    raw = torch.load(tmp_path / "c.pt", weights_only=True)
    assert raw["checksum"] == content_checksum(obj) and raw["checksum"].startswith("sha256:")
    assert load_checkpoint(tmp_path / "c.pt").keys() == obj.keys()
    for changed in ({**obj, "step": 4}, {**obj, "args": {"lr": 2e-4, "name": "x"}}, {**obj, "t": (1, 2.5, 0)},
                    {**obj, "rng": {"state": torch.arange(5).float(), "gauss": None}}):
        assert content_checksum(changed) != content_checksum(obj)
    torch.save({"step": 1}, tmp_path / "old.pt")  # checkpoints from before the checksum still load
    assert load_checkpoint(tmp_path / "old.pt") == {"step": 1}
