"""The reference images of a run: its held-out split (``split.json``) exported as PNGs, and for a
text-to-image run the held-out images' captions beside them (``captions.json``)."""
import json
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from ..data import DigitsDataset, FashionMNISTDataset, ImageFolderDataset, scan_image_folder
from ..data.captions import CaptionedImageDataset, read_captioned_folder
from ..images import save_pngs

CAPTIONS_FILE = "captions.json"  # {png name: [its captions]} of a text-to-image run's reference


def export_reference(run_dir: Path, out: Optional[Path] = None) -> Path:
    """Write the run's held-out images (from split.json) as PNGs; reuse them if already there."""
    split_path = run_dir / "split.json"
    if not split_path.is_file():
        raise FileNotFoundError(f"{split_path} not found: evaluate needs a run trained with --eval-fraction > 0, or --ref DIR")
    split = json.loads(split_path.read_text())
    if not split["eval"]:
        raise ValueError(f"the run in {run_dir} has no held-out split (--eval-fraction 0): pass --ref DIR")
    out = out or run_dir / "eval" / "reference"
    done = out / ".complete"
    if done.is_file() and done.read_text() == str(len(split["eval"])):
        return out
    if split["kind"] in ("digits", "fashion-mnist"):
        ids = [int(i) for i in split["eval"]]
        if split["kind"] == "digits":
            ds = DigitsDataset(ids, image_size=split["image_size"])
        else:  # the official test split
            ds = FashionMNISTDataset(split["root"], "test", indices=ids, image_size=split["image_size"])
        save_pngs(ds.uint8_images(), out, names=[f"{i}_c{lab}.png" for i, lab in zip(split["eval"], ds.targets)])
    elif split["kind"] == "captions":
        _export_captioned(split, out)
    else:
        classes, samples = scan_image_folder(split["root"])
        index = {p: k for k, (p, _) in enumerate(samples)}
        full = ImageFolderDataset(split["root"], split["image_size"], scan=(classes, samples))
        wanted = [index[str(Path(full.root) / rel)] for rel in split["eval"] if str(Path(full.root) / rel) in index]
        ds = ImageFolderDataset(split["root"], split["image_size"], indices=wanted, scan=(classes, samples))
        _save_readable(ds, out, lambda i: f"{i:06d}_c{ds.samples[i][1]}.png")
    done.write_text(str(len(split["eval"])))
    return out


def _export_captioned(split: dict, out: Path) -> None:
    """The held-out images of a captioned folder as ``<n>.png``, their captions in ``captions.json``."""
    folder = read_captioned_folder(split["root"])
    index = {name: k for k, name in enumerate(folder.files)}
    wanted = [index[name] for name in split["eval"] if name in index]
    ds = CaptionedImageDataset(folder, split["image_size"], indices=wanted)
    saved = _save_readable(ds, out, lambda i: f"{i:06d}.png")
    captions = {name: folder.captions[ds.samples[i][1]] for name, i in saved.items()}
    (out / CAPTIONS_FILE).write_text(json.dumps(captions, indent=1))


def _save_readable(ds: ImageFolderDataset, out: Path, name_of: Callable[[int], str]) -> Dict[str, int]:
    """Each readable item i of ``ds`` as the PNG ``out / name_of(i)`` (an unreadable one is
    reported and skipped, as in training): {name: i} of those saved."""
    out.mkdir(parents=True, exist_ok=True)
    saved = {}
    for i in range(len(ds)):
        try:
            arr = ds.load_uint8(i)
        except Exception as exc:
            ds.report(i, exc)
            continue
        saved[name_of(i)] = i
        save_pngs(torch.from_numpy(arr).permute(2, 0, 1)[None], out, names=[name_of(i)])
    return saved


def reference_captions(ref_dir: Path) -> Optional[Dict[str, List[str]]]:
    """{png name: captions} of a text-to-image run's exported reference; None for other folders."""
    path = Path(ref_dir) / CAPTIONS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def reference_labels(ref_dir: Path) -> List[int]:
    """Class labels of exported reference images (file names end in _c<label>.png)."""
    labels = []
    for p in sorted(ref_dir.glob("*.png")):
        stem = p.stem
        if "_c" in stem:
            try:
                labels.append(int(stem.rsplit("_c", 1)[1]))
            except ValueError:
                pass
    return labels
