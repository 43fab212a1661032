"""evaluate.py: FID, IS, KID and precision/recall through torch-fidelity, offline, on digits."""
import json
import math

import pytest
import torch


def test_eval_digits_all_metrics_offline(digits_run, tmp_path):
    from xswin_fast.cli import evaluate
    from xswin_fast.evaluation.digits_extractor import train_digits_extractor

    weights = train_digits_extractor(tmp_path / "digits_cnn.pt", epochs=2, verbose=False)
    out = tmp_path / "eval"
    rc = evaluate.main(["--ckpt", str(digits_run), "--num-samples", "40", "--steps", "3", "--digits-extractor-weights",
                   str(weights), "--out", str(out), "--no-progress", "--backend", "torch"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    for key in ("fid", "isc_mean", "isc_std", "kid_mean", "kid_std", "precision", "recall", "f_score"):
        assert math.isfinite(m[key]), key
    assert m["feature_extractor"] == "digits-cnn" and m["num_generated"] == 40 and m["num_reference"] == 359
    assert 0.0 <= m["precision"] <= 1.0 and 0.0 <= m["recall"] <= 1.0 and m["isc_mean"] >= 1.0
    assert len(list((digits_run / "eval" / "reference").glob("*.png"))) == 359


def test_eval_flow_run_samples_with_its_own_scheduler(tmp_path):
    from helpers import train_tiny_digits
    from xswin_fast.cli import evaluate
    from xswin_fast.evaluation.digits_extractor import train_digits_extractor

    run = train_tiny_digits(tmp_path / "flow", "--objective", "flow")
    weights = train_digits_extractor(tmp_path / "digits_cnn.pt", epochs=1, verbose=False)
    out = tmp_path / "eval"
    rc = evaluate.main(["--ckpt", str(run), "--num-samples", "20", "--steps", "3", "--cfg-interval", "0", "0.5",
                        "--metrics", "fid", "--digits-extractor-weights", str(weights), "--out", str(out),
                        "--no-progress", "--backend", "torch"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert math.isfinite(m["fid"]) and m["num_generated"] == 20
    assert (m["objective"], m["sampler"], m["steps"], m["cfg_interval"]) == ("flow", "euler", 3, [0.0, 0.5])


def test_eval_takes_a_model_folder_with_its_held_out_split(digits_run, tmp_path):
    from xswin_fast.cli import evaluate
    from xswin_fast.evaluation.digits_extractor import train_digits_extractor

    weights = train_digits_extractor(tmp_path / "digits_cnn.pt", epochs=1, verbose=False)
    folder = digits_run / "model"  # the trainer's export (XSwinPipeline folder + split.json)
    out = tmp_path / "eval"
    rc = evaluate.main(["--ckpt", str(folder), "--num-samples", "20", "--steps", "2", "--metrics", "fid",
                        "--digits-extractor-weights", str(weights), "--out", str(out), "--no-progress",
                        "--backend", "torch"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert math.isfinite(m["fid"]) and m["num_generated"] == 20 and m["num_reference"] == 359


def test_eval_digits_extractor_is_registered_in_torch_fidelity():
    from xswin_fast.evaluation.digits_extractor import register

    name = register()
    assert register() == name  # idempotent
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    assert name in FEATURE_EXTRACTORS_REGISTRY


def test_eval_refuses_pickled_inception_weights(tmp_path):
    import argparse

    from xswin_fast.evaluation.metrics import check_weights_file

    bad = tmp_path / "weights.pth"
    torch.save({"w": torch.zeros(1), "x": argparse.Namespace()}, bad)
    with pytest.raises(RuntimeError, match="weights_only"):
        check_weights_file(bad)
    with pytest.raises(FileNotFoundError):
        check_weights_file(tmp_path / "missing.pth")


def test_eval_announces_training_the_digits_extractor(tmp_path, caplog):
    from xswin_fast.evaluation.digits_extractor import load_digits_cnn

    with caplog.at_level("INFO", logger="xswin_fast"):
        load_digits_cnn(tmp_path / "never_trained.pt")
    text = caplog.text
    assert "training the digits feature extractor" in text and "trained in" in text
    caplog.clear()
    with caplog.at_level("INFO", logger="xswin_fast"):
        load_digits_cnn(tmp_path / "never_trained.pt")  # cached now: nothing to announce
    assert "training" not in caplog.text


@pytest.mark.parametrize("arg", ["kid_subset_size", "isc_splits", "prc_neighborhood", "batch_size"])
def test_eval_metric_sizes_below_one_are_refused(arg):
    from xswin_fast.evaluation.metrics import TensorImageDataset, compute_metrics

    images = TensorImageDataset(torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8))
    with pytest.raises(ValueError, match=f"{arg} must be >= 1, got 0"):
        compute_metrics(images, images, **{arg: 0})
