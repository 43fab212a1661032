"""Captioned image folders (metadata.jsonl, Hugging Face's ImageFolder convention): several
captions per image both ways, bad metadata as one error naming the file and line, grey and RGB
images, the writer from class labels, and the caption table (one caption drawn per image,
caption dropout to the null caption)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from xswin_fast.data import DataError, CaptionedImageDataset, read_captioned_folder, write_captioned_folder
from xswin_fast.data.captions import HELD_OUT_TEMPLATES, TEMPLATES, captions_for
from xswin_fast.text import TextEmbeddings
from xswin_fast.text.table import CaptionTable


def _folder(tmp_path, lines, images=("a.png", "b.png"), mode="L"):
    for name in images:
        Image.new(mode, (6, 6), 200 if mode == "L" else (10, 200, 30)).save(tmp_path / name)
    (tmp_path / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_several_captions_per_image_both_ways(tmp_path):
    folder = read_captioned_folder(str(_folder(tmp_path, [
        json.dumps({"file_name": "a.png", "text": ["a cat", "a small cat"], "label": 3}),
        json.dumps({"file_name": "b.png", "text": "a dog"}),
        "",
        json.dumps({"file_name": "a.png", "text": "a grey cat"}),
    ])))
    assert folder.files == ["a.png", "b.png"]
    assert folder.captions == [["a cat", "a small cat", "a grey cat"], ["a dog"]]
    assert folder.extra[0] == {"label": 3}
    assert folder.distinct_captions() == ["a cat", "a small cat", "a grey cat", "a dog"]


@pytest.mark.parametrize("line,message", [
    ("{not json", "not valid JSON"),
    ('["a.png", "a cat"]', "expected an object"),
    ('{"file_name": "a.png"}', "expected an object"),
    ('{"file_name": "a.png", "text": 3}', "'text' must be"),
    ('{"file_name": "a.png", "text": []}', "'text' must be"),
    ('{"file_name": "a.png", "text": ["  "]}', "empty caption"),
    ('{"file_name": "missing.png", "text": "x"}', "does not exist"),
    ('{"file_name": "../a.png", "text": "x"}', "relative"),
])
def test_bad_metadata_names_file_and_line(tmp_path, line, message):
    _folder(tmp_path, [json.dumps({"file_name": "b.png", "text": "fine"}), line])
    with pytest.raises(DataError, match=message) as info:
        read_captioned_folder(str(tmp_path))
    assert f"{tmp_path / 'metadata.jsonl'} line 2" in str(info.value) and "\n" not in str(info.value)


def test_missing_or_empty_metadata(tmp_path):
    with pytest.raises(DataError, match="no metadata.jsonl"):
        read_captioned_folder(str(tmp_path))
    _folder(tmp_path, [""])
    with pytest.raises(DataError, match="names no image"):
        read_captioned_folder(str(tmp_path))


@pytest.mark.parametrize("mode,channels", [("L", 1), ("RGB", 3)])
def test_dataset_items_are_images_and_their_index(tmp_path, mode, channels):
    folder = read_captioned_folder(str(_folder(tmp_path, [json.dumps({"file_name": n, "text": n}) for n in ("a.png", "b.png")],
                                               mode=mode)))
    ds = CaptionedImageDataset(folder, 4, indices=[1])
    x, i = ds[0]
    assert ds.channels == channels and x.shape == (channels, 4, 4) and i == 1
    assert -1 <= x.min() and x.max() <= 1
    flipped, j = ds[1]  # index len + 0: the flipped copy of the same item
    assert j == 1 and torch.equal(flipped, x.flip(-1))


def test_writer_makes_varied_captions_from_labels(tmp_path):
    images = np.arange(4 * 8 * 8, dtype=np.uint8).reshape(4, 8, 8)
    out = write_captioned_folder(str(tmp_path / "d"), images, [7, 7, 1, 0], "digits", captions_per_image=3)
    folder = read_captioned_folder(str(out))
    assert len(folder.files) == 4 and all(len(c) == 3 and len(set(c)) == 3 for c in folder.captions)
    assert all("seven" in c or "7" in c for c in folder.captions[0]) and folder.extra[2] == {"label": 1}
    assert np.array_equal(np.asarray(Image.open(out / folder.files[3])), images[3])
    with pytest.raises(ValueError, match="kind"):
        write_captioned_folder(str(tmp_path / "x"), images, [0] * 4, "cifar")


def test_held_out_templates_never_write_a_training_caption():
    rng = __import__("random").Random(0)
    for kind in TEMPLATES:
        for label in range(10):
            seen = set(captions_for(kind, label, TEMPLATES[kind], rng, 1000))
            assert not seen & set(captions_for(kind, label, HELD_OUT_TEMPLATES[kind], rng, 1000))


def _table():
    emb = TextEmbeddings(torch.randn(4, 3, 8), torch.ones(4, 3, dtype=torch.bool), torch.randn(4, 8))
    return CaptionTable(emb, ["a", "b", "c", "d"], [[0, 1, 2], [3]])


def test_caption_table_draws_each_images_own_captions():
    table = _table()
    torch.manual_seed(0)
    images = torch.tensor([0] * 300 + [1] * 50)
    drawn = table.draw(images, 0.0, torch.device("cpu"), torch.float32)
    rows = [int(torch.nonzero((table.embeddings.pooled == p).all(1))[0]) for p in drawn.pooled]
    assert set(rows[:300]) == {0, 1, 2} and set(rows[300:]) == {3}
    assert all(50 < rows[:300].count(r) < 150 for r in (0, 1, 2))  # uniform: 100 expected each
    assert drawn.mask.all()


def test_caption_dropout_makes_null_captions():
    table = _table()
    torch.manual_seed(0)
    images = torch.zeros(1000, dtype=torch.long)
    assert not table.draw(images[:10], 1.0 - 1e-9, torch.device("cpu"), torch.float32).mask.any()
    drawn = table.draw(images, 0.1, torch.device("cpu"), torch.float32)
    null = ~drawn.mask.any(1)
    assert 60 < int(null.sum()) < 140  # 100 expected
    assert drawn.hidden[null].abs().sum() == 0 and drawn.pooled[null].abs().sum() == 0
