"""Fashion-MNIST: the IDX reader, the dataset's sizes and split, train.py --data fashion-mnist on
small IDX files written here (CI has no dataset package), and the feature extractor's determinism."""
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from xswin_fast.cli import train
from xswin_fast.data import DataError, FashionMNISTDataset
from xswin_fast.data.fashion_mnist import CLASSES, FILES, find_fashion_mnist, read_idx

from families import TINY_DIGITS
from test_cli_errors import assert_one_line_error, run_cli


def write_idx(path: Path, array: np.ndarray) -> None:
    """``array`` (uint8) as an IDX file at ``path``, gzipped if the name ends in .gz."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    (gzip.open if path.suffix == ".gz" else open)(path, "wb").write(data)


def write_fashion_mnist(root: Path, n_train: int = 64, n_test: int = 20, seed: int = 0) -> Path:
    """Small Fashion-MNIST look-alikes in ``root``: per class a bright block at its own place on
    a dark background, plus noise, so that a classifier can learn them."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = (np.arange(n) % len(CLASSES)).astype(np.uint8)
        images = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
        for i, c in enumerate(labels):
            r, col = 2 + 8 * (c // 3), 2 + 8 * (c % 3)
            images[i, r : r + 8, col : col + 8] = 220
        images_name, labels_name = FILES[split]
        write_idx(root / images_name, images)
        write_idx(root / labels_name, labels)
    return root


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return write_fashion_mnist(tmp_path_factory.mktemp("fashion"))


@pytest.mark.parametrize("name", ["x.idx", "x.idx.gz"])
def test_read_idx_returns_what_was_written(tmp_path, name):
    array = np.random.default_rng(1).integers(0, 256, (5, 3, 4)).astype(np.uint8)
    write_idx(tmp_path / name, array)
    assert np.array_equal(read_idx(tmp_path / name), array)


def test_read_idx_refuses_a_wrong_header_or_a_truncated_file(tmp_path):
    (tmp_path / "bad.idx").write_bytes(bytes([0, 0, 0x0D, 1, 0, 0, 0, 2]) + b"\0" * 8)  # float32 type code
    with pytest.raises(DataError, match="not an unsigned-byte IDX"):
        read_idx(tmp_path / "bad.idx")
    write_idx(tmp_path / "short.idx", np.zeros((4, 2), np.uint8))
    (tmp_path / "short.idx").write_bytes((tmp_path / "short.idx").read_bytes()[:-3])
    with pytest.raises(DataError, match=r"header says \(4, 2\) \(8 bytes\), the file holds 5"):
        read_idx(tmp_path / "short.idx")


def test_missing_files_say_how_to_install_them(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist") as exc:
        find_fashion_mnist(tmp_path)
    assert "\n" not in str(exc.value) and "train-images-idx3-ubyte.gz" in str(exc.value)


def test_sizes_pad_keep_or_resample_the_native_images(tiny_root):
    native = FashionMNISTDataset(tiny_root, "train", image_size=28)
    padded = FashionMNISTDataset(tiny_root, "train", image_size=32)
    small = FashionMNISTDataset(tiny_root, "test", indices=[3, 1], image_size=16)
    raw = read_idx(tiny_root / FILES["train"][0])
    assert native.images.shape == (64, 1, 28, 28) and padded.images.shape == (64, 1, 32, 32)
    assert np.array_equal(native.uint8_images()[5, 0].numpy(), raw[5])
    assert torch.equal(padded.images[:, :, 2:30, 2:30], native.images)
    assert (padded.images[:, :, :2] == -1).all() and (padded.images[:, :, :, 30:] == -1).all()
    assert small.images.shape == (2, 1, 16, 16) and small.targets == [3, 1] and -1 <= small.images.min() <= small.images.max() <= 1
    x, y = native[5 + len(native)]  # the flipped copy
    assert torch.equal(x, native.images[5].flip(-1)) and y == 5 % 10
    assert native.classes == list(CLASSES) and native.uint8_images().dtype == torch.uint8


def test_train_py_trains_on_fashion_mnist_and_holds_out_the_test_set(tiny_root, tmp_path):
    run = tmp_path / "run"
    assert train.main([
        "--data", "fashion-mnist", "--data-dir", str(tiny_root), "--image-size", "16", "--run-dir", str(run),
        "--model-kwargs", '{"patch_size": 2, "embed_dim": 16, "depths": [1, 1], "num_heads": [1, 1]}', "--backend", "torch",
        "--threads", "1", "--global-batch-size", "16", "--sample-every", "0", "--sample-num", "4", "--sample-steps", "2",
        "--no-progress", "--max-steps", "2",
    ]) == 0
    split = json.loads((run / "split.json").read_text())
    assert split["kind"] == "fashion-mnist" and split["eval"] == [str(i) for i in range(20)]
    config = json.loads((run / "config.json").read_text())
    assert config["data"] == "fashion-mnist" and config["data_dir"] == str(tiny_root.resolve())
    assert config["image_size"] == 16 and config["vae"] is None

    # evaluate.py scores it against the official test set with the Fashion-MNIST extractor
    from xswin_fast.cli import evaluate
    from xswin_fast.evaluation.fashion_extractor import train_fashion_extractor

    weights = train_fashion_extractor(tmp_path / "fashion.pt", tiny_root, epochs=1, batch=16, verbose=False)
    assert evaluate.main(["--ckpt", str(run), "--num-samples", "10", "--steps", "2", "--metrics", "fid,prc", "--threads", "1",
                          "--backend", "torch", "--fashion-extractor-weights", str(weights), "--out", str(tmp_path / "ev")]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["feature_extractor"] == "fashion-cnn" and (metrics["num_generated"], metrics["num_reference"]) == (10, 20)
    reference = sorted((run / "eval" / "reference").glob("*.png"))
    assert [p.name for p in reference[:2]] == ["0_c0.png", "10_c0.png"]  # test image i, its label


def test_train_py_without_the_files_ends_in_one_line(tmp_path, capsys):
    argv = ["--data", "fashion-mnist", "--data-dir", str(tmp_path / "none"), "--run-dir", str(tmp_path / "run"),
            "--model-kwargs", TINY_DIGITS, "--backend", "torch", "--threads", "1", "--no-progress", "--max-steps", "1"]
    assert_one_line_error(*run_cli(train.main, argv, capsys), "apt-get install dataset-fashion-mnist")


def test_data_dir_without_fashion_mnist_is_refused(tmp_path, capsys):
    argv = ["--data-dir", str(tmp_path), "--run-dir", str(tmp_path / "run"), "--max-steps", "1", "--no-progress"]
    assert_one_line_error(*run_cli(train.main, argv, capsys), "--data-dir", "--data fashion-mnist")


def test_the_extractor_is_deterministic_and_scores_a_set_against_itself_as_zero(tiny_root, tmp_path):
    from xswin_fast.evaluation.fashion_extractor import load_fashion_cnn, train_fashion_extractor
    from xswin_fast.evaluation.metrics import TensorImageDataset, compute_metrics

    paths = [train_fashion_extractor(tmp_path / f"{k}.pt", tiny_root, epochs=2, batch=16, verbose=False) for k in "ab"]
    other = train_fashion_extractor(tmp_path / "c.pt", tiny_root, epochs=2, batch=16, seed=7, verbose=False)
    a, b, c = (load_fashion_cnn(p).state_dict() for p in (*paths, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    images = FashionMNISTDataset(tiny_root, "test", image_size=16).uint8_images()
    same = compute_metrics(TensorImageDataset(images), TensorImageDataset(images.clone()), feature_extractor="fashion",
                           weights_path=paths[0], metrics=("fid",), device="cpu")
    assert abs(same["fid"]) < 1e-3 and same["feature_extractor"] == "fashion-cnn"
    padded = FashionMNISTDataset(tiny_root, "test", image_size=32).uint8_images()
    near = compute_metrics(TensorImageDataset(padded), TensorImageDataset(images), feature_extractor="fashion",
                           weights_path=paths[0], metrics=("fid",), device="cpu")
    assert abs(near["fid"]) < 1e-2  # 32 px images lose their padding and are resampled as the 16 px ones
