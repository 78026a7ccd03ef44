"""``xmrbench data check PATH``: validate a user's data directory (or file) before a run.

The layout is detected from the files:

- ``meta.json`` with ``"layout": "labelled"`` or ``*_img.npy`` files: a labelled feature
  set (``xmrbench/data/labelled.py``);
- ``*_phrases.jsonl`` files: phrase-region annotations (``xmrbench/data/entities.py``);
- ``*_caps.txt`` or feature files (``*_ims.npy|.h5``, ``*_global.npy|.h5``): the precomp
  layout (``xmrbench/data/precomp.py``), with vocabulary files (``*vocab*.json``) and
  word-vector files (``glove*.txt``, ``*.vec``, ``*vectors*.txt``) found beside it;
- a single file: a vocabulary json or a word-vector text file.

Every check runs the loader that a training run would use, so ``check`` and a run
can never disagree; a problem is reported as the loader's one-line message naming
the file (and line or row). Splits are checked independently, so one run lists
every broken split. Feature files over 2 GiB are scanned for NaN/inf on a fixed
sample of rows unless ``scan_all``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xmrbench.errors import DataError

KNOWN_SPLIT_SIZES: dict[str, dict[str, int]] = {
    "Flickr30K": {"train": 29000, "dev": 1000, "test": 1000},
    "MS-COCO": {"train": 113287, "dev": 5000, "test": 1000, "testall": 5000},
}
"""Standard split sizes in images (Karpathy splits; MS-COCO train includes restval)."""

MIN_VOCAB_COVERAGE = 0.5
"""A vocabulary that knows fewer of the training caption tokens than this does not belong to the captions."""

_VOCAB_PATTERNS = ("*vocab*.json",)
_VECTOR_PATTERNS = ("glove*.txt", "*.vec", "*vectors*.txt")


@dataclass
class CheckReport:
    """The outcome of a check: the layout found, a summary, problems (one line each), notes."""

    path: str
    layout: str
    summary: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def attempt(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn``; a ``DataError`` becomes a problem line (and None is returned)."""
        try:
            return fn()
        except DataError as exc:
            self.problems.append(exc.one_line())
            return None


def detect_layout(path: Path) -> str:
    """``labelled``, ``entities``, ``precomp``, ``vocabulary`` or ``word_vectors``."""
    if path.is_file():
        if path.suffix == ".json":
            return "vocabulary"
        return "word_vectors"
    if not path.is_dir():
        raise DataError("no such file or directory", where=str(path))
    names = [p.name for p in path.iterdir() if not p.name.startswith(".")]
    if "meta.json" in names or any(n.endswith("_img.npy") for n in names):
        return "labelled"
    if any(n.endswith("_phrases.jsonl") for n in names):
        return "entities"
    from xmrbench.data.precomp import _split_names

    if _split_names(path):
        return "precomp"
    raise DataError(
        "no known layout: expected *_caps.txt with *_ims.npy/*_global.npy (precomp), *_img.npy with meta.json "
        "(labelled) or *_phrases.jsonl (entities)",
        where=str(path),
    )


def check_path(path: str | os.PathLike, *, captions_per_image: int = 5, scan_all: bool = False) -> CheckReport:
    """Check ``path`` (see the module docstring); never raises for a data problem."""
    path = Path(path)
    try:
        layout = detect_layout(path)
    except DataError as exc:
        return CheckReport(str(path), "unknown", problems=[exc.one_line()])
    report = CheckReport(str(path), layout)
    if layout == "precomp":
        _check_precomp(path, report, captions_per_image, scan_all)
    elif layout == "labelled":
        _check_labelled(path, report)
    elif layout == "entities":
        _check_entities(path, report, captions_per_image)
    elif layout == "vocabulary":
        _check_vocab(path, report, captions=None)
    else:
        _check_vectors(path, report)
    return report


# ---------------------------------------------------------------------------------
# precomp
# ---------------------------------------------------------------------------------


def _fmt_split(name: str, split: Any, entry: dict[str, Any]) -> str:
    parts = [f"{name}: {split.n_images:,} images"]
    if split.captions_per_image:
        parts[0] += f" x {split.captions_per_image} captions"
    else:
        parts[0] += ", no captions (un-annotated)"
    if entry.get("region_shape"):
        parts.append(f"regions {tuple(entry['region_shape'])} {entry['region_dtype']}")
    if entry.get("global_dim"):
        parts.append(f"global {entry['global_dim']}-d {entry['global_dtype']}")
    if entry.get("feature_format"):
        parts.append("HDF5")
    if split.extras:
        parts.append("extras: " + ", ".join(sorted(split.extras)))
    return "; ".join(parts)


def _check_precomp(root: Path, report: CheckReport, cpi: int, scan_all: bool) -> None:
    from xmrbench.data.precomp import FULL_CHECK_BYTES, _split_names, load_precomp

    names = _split_names(root)
    full_bytes = 1 << 62 if scan_all else FULL_CHECK_BYTES
    loaded: dict[str, Any] = {}
    infos: dict[str, dict[str, Any]] = {}
    for name in names:
        data = report.attempt(lambda n=name: load_precomp(root, splits=[n], captions_per_image=cpi,
                                                         full_check_bytes=full_bytes))
        if data is None:
            continue
        split = report.attempt(lambda d=data, n=name: d.split(n))
        if split is not None:
            loaded[name] = split
            infos[name] = data.info["splits"][name]
    for needed, why in (("train", "training needs it"), ("dev", "models are selected on it")):
        if needed not in names:
            report.problems.append(f"{root}: missing split {needed!r} ({needed}_caps.txt with {needed}_ims.npy or "
                                   f"{needed}_global.npy); {why}")
    if "test" not in names and "testall" not in names:
        report.problems.append(f"{root}: missing split 'test' (or 'testall'): nothing to evaluate on")
    _check_dims(root, infos, report)
    for name, split in loaded.items():
        report.summary.append(_fmt_split(name, split, infos[name]))
        big = [p for p in root.glob(f"{name}_*") if p.name.startswith((f"{name}_ims.", f"{name}_global."))
               and p.stat().st_size > FULL_CHECK_BYTES]
        if big and not scan_all:
            report.notes.append(f"{name}: features over 2 GiB were scanned for NaN/inf on a sample of rows "
                                "(--scan-all reads every row)")
    _known_sizes(loaded, report)
    testall = loaded.get("testall")
    if testall is not None and testall.n_images % 5:
        report.notes.append(f"testall: {testall.n_images:,} images do not make 5 equal folds for the "
                            "MS-COCO 1K protocol (testall_5fold)")
    train = loaded.get("train")
    for pattern in _VOCAB_PATTERNS:
        for vocab_path in sorted(root.glob(pattern)):
            if not vocab_path.name.startswith("."):
                _check_vocab(vocab_path, report, captions=None if train is None else train.captions)
    for pattern in _VECTOR_PATTERNS:
        for vec_path in sorted(root.glob(pattern)):
            if not vec_path.name.startswith("."):
                _check_vectors(vec_path, report)


def _check_dims(root: Path, infos: dict[str, dict[str, Any]], report: CheckReport) -> None:
    """Region and global feature sizes must agree across splits (a model sees one D)."""
    for key, what, suffix in (("region_shape", "region features", "_ims"), ("global_dim", "global features",
                                                                             "_global")):
        first: tuple[str, Any] | None = None
        for name, info in infos.items():
            value = info.get(key)
            if value is None:
                continue
            if first is None:
                first = (name, value)
                continue
            ref_name, ref = first
            if key == "region_shape" and value[-1] != ref[-1] or key == "global_dim" and value != ref:
                d, ref_d = (value[-1], ref[-1]) if key == "region_shape" else (value, ref)
                report.problems.append(
                    f"{root / (name + suffix)}: {what} are {d}-d but {ref_name}'s are {ref_d}-d; all splits need "
                    "the same feature size"
                )


def _known_sizes(loaded: dict[str, Any], report: CheckReport) -> None:
    sizes = {name: split.n_images for name, split in loaded.items()}
    for dataset, standard in KNOWN_SPLIT_SIZES.items():
        if all(sizes.get(s) == n for s, n in standard.items()):
            report.summary.append(f"split sizes match the standard {dataset} splits")
            return
    if sizes:
        report.notes.append(
            "split sizes match neither the Flickr30K (29,000/1,000/1,000) nor the MS-COCO (113,287/5,000/1,000/5,000) "
            "standard splits: results will not be comparable with the papers'"
        )


def _check_vocab(path: Path, report: CheckReport, *, captions: list[str] | None) -> None:
    from xmrbench.data.vocab_file import caption_coverage, load_vocab_file

    vf = report.attempt(lambda: load_vocab_file(path))
    if vf is None:
        return
    line = f"vocabulary {path.name}: {vf.words:,} words ({vf.order} order)"
    if captions is not None:
        coverage = caption_coverage(vf.vocab, captions)
        line += f", knows {coverage:.1%} of the training caption tokens"
        if coverage < MIN_VOCAB_COVERAGE:
            report.problems.append(
                f"{path}: vocabulary does not match the captions: it knows only {coverage:.1%} of the tokens of "
                f"train_caps.txt (expected at least {MIN_VOCAB_COVERAGE:.0%})"
            )
            return
    report.summary.append(line)


def _check_vectors(path: Path, report: CheckReport) -> None:
    from xmrbench.data.wordvec import read_word_vectors

    vectors = report.attempt(lambda: read_word_vectors(path))
    if vectors is not None:
        dup = f", {vectors.duplicates} repeated words ignored" if vectors.duplicates else ""
        report.summary.append(f"word vectors {path.name}: {len(vectors):,} words x {vectors.dim} dims{dup}")


# ---------------------------------------------------------------------------------
# labelled and entities
# ---------------------------------------------------------------------------------


def _check_labelled(root: Path, report: CheckReport) -> None:
    from xmrbench.data.labelled import load_labelled

    data = report.attempt(lambda: load_labelled(root))
    if data is None:
        return
    report.summary.append(f"labelled feature set {data.name!r}: {len(data.classes)} classes, "
                          f"{data.label_kind} labels")
    for name, split in data.splits.items():
        report.summary.append(f"{name}: {split.n:,} pairs; image {split.img_feats.shape[1]}-d, "
                              f"text {split.txt_feats.shape[1]}-d")
    for needed in ("train", "test"):
        if needed not in data.splits:
            report.problems.append(f"{root}: missing split {needed!r} ({needed}_img.npy, {needed}_txt.npy, "
                                   f"{needed}_labels.npy)")


def _check_entities(root: Path, report: CheckReport, cpi: int) -> None:
    from xmrbench.data.entities import entities_split_names, load_entities_split

    for name in entities_split_names(root):
        split = report.attempt(lambda n=name: load_entities_split(root, n, captions_per_image=cpi))
        if split is None:
            continue
        n_phrases = sum(len(p) for p in split.phrases)
        n_props = int(split.proposal_offsets[-1])
        report.summary.append(
            f"{name}: {split.n_images:,} images x {cpi} captions, {n_phrases:,} phrases, "
            f"{n_props:,} proposals ({n_props / max(split.n_images, 1):.0f} per image), "
            f"proposal upper bound {split.upper_bound():.1%}"
        )
