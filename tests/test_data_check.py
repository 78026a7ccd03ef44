"""Tests of ``xmrbench data check`` (xmrbench/data/check.py): broken directories of every
layout give one line naming the file (and line or row) and exit 2; good ones a summary."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from xmrbench.core.text.vocab import SPECIALS, Vocabulary
from xmrbench.data.check import check_path, detect_layout
from xmrbench.data.dataset import Split
from xmrbench.data.entities import write_entities
from xmrbench.data.hdf5 import write_h5_features
from xmrbench.data.precomp import write_precomp
from xmrbench.data.vocab_file import write_vocab_file
from xmrbench.data.wordvec import write_word_vectors

from support import cli

WORDS = ["dog", "cat", "runs", "red", "car", "a", "the"]




def _split(name: str, n: int, rng: np.random.Generator, dim: int = 6) -> Split:
    caps = [" ".join(rng.choice(WORDS, size=4)) for _ in range(5 * n)]
    return Split(name, caps, 5, regions=rng.random((n, 3, dim), dtype=np.float32),
                 global_feats=rng.random((n, 4), dtype=np.float32),
                 extras={"semantics": ["red car dog"] * n, "tags": [[["canine", 0.9]]] * n})


@pytest.fixture()
def good(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "precomp"
    write_precomp(root, {"train": _split("train", 8, rng), "dev": _split("dev", 3, rng),
                         "test": _split("test", 3, rng)})
    write_vocab_file(Vocabulary([*SPECIALS, *WORDS]), root / "vocab.json")
    return root


def test_a_good_directory_passes_with_a_summary(good, capsys):
    code, out, err = cli(["data", "check", str(good)], capsys)
    assert code == 0 and err == ""
    assert "precomp layout, no problems found" in out
    assert "train: 8 images x 5 captions" in out and "regions (3, 6) float32" in out
    assert "vocabulary vocab.json: 7 words (scan order), knows 100.0%" in out
    assert "match neither the Flickr30K" in out


def _save(path: Path, arr: np.ndarray) -> None:
    np.save(path, arr)


def _drop_line(path: Path, line: int) -> None:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    del lines[line - 1]
    path.write_text("".join(lines), encoding="utf-8")


def _replace_line(path: Path, line: int, text: str) -> None:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[line - 1] = text + "\n"
    path.write_text("".join(lines), encoding="utf-8")


def _nan_row(root: Path) -> None:
    arr = np.load(root / "train_ims.npy")
    arr[5, 1, 2] = np.nan
    np.save(root / "train_ims.npy", arr)


def _mismatched_vocab(root: Path) -> None:
    write_vocab_file(Vocabulary([*SPECIALS, "zebra", "giraffe"]), root / "vocab.json")


def _broken_vocab(root: Path) -> None:
    doc = json.loads((root / "vocab.json").read_text())
    doc["word2idx"]["dog"] = 9
    (root / "vocab.json").write_text(json.dumps(doc))


def _other_dims(root: Path) -> None:
    _save(root / "test_ims.npy", np.ones((3, 3, 8), np.float32))


# (what is broken, how to break it, the file named in the message, what the message says)
BROKEN: list[tuple[str, Callable[[Path], None], str, str]] = [
    ("missing split", lambda r: [(r / f"dev{s}").unlink() for s in ("_caps.txt", "_ims.npy", "_global.npy",
                                                                    "_semantics.txt", "_tags.jsonl")],
     "precomp", "missing split 'dev'"),
    ("4 captions for one image", lambda r: _drop_line(r / "train_caps.txt", 12), "train_caps.txt",
     "39 captions is not a multiple of 5 captions per image (8 images)"),
    ("features of another row count", lambda r: _save(r / "train_global.npy", np.ones((7, 4), np.float32)),
     "train_global.npy", "7 rows but train_ims.npy has 8 images"),
    ("2-D region features", lambda r: _save(r / "dev_ims.npy", np.ones((3, 6), np.float32)), "dev_ims.npy",
     "region features must be 3-D (N, R, D), got shape (3, 6)"),
    ("float64 features", lambda r: _save(r / "test_global.npy", np.ones((3, 4))), "test_global.npy",
     "dtype float64; expected float32 or float16"),
    ("NaN features", _nan_row, "train_ims.npy", "row 5 holds NaN or inf"),
    ("an empty caption", lambda r: _replace_line(r / "dev_caps.txt", 7, "   "), "dev_caps.txt",
     "line 7 is an empty caption"),
    ("vocabulary mismatch", _mismatched_vocab, "vocab.json", "vocabulary does not match the captions"),
    ("broken vocabulary file", _broken_vocab, "vocab.json", "word2idx and idx2word disagree"),
    ("feature sizes differ between splits", _other_dims, "test_ims", "region features are 8-d but train's are 6-d"),
    ("semantics of the wrong length", lambda r: _drop_line(r / "test_semantics.txt", 1), "test_semantics.txt",
     "2 lines for 3 images"),
    ("malformed tags", lambda r: _replace_line(r / "dev_tags.jsonl", 2, '[["Dog", 2]]'), "dev_tags.jsonl",
     "line 2: tag 'Dog' is not a non-empty lower-case string"),
    ("features without captions", lambda r: (r / "test_caps.txt").unlink(), "test_ims.npy",
     "image features without captions: test_caps.txt is missing"),
    ("captions without features", lambda r: [(r / f"dev{s}").unlink() for s in ("_ims.npy", "_global.npy")],
     "dev_caps.txt", "split 'dev' has captions but no image features"),
    ("the same features twice", lambda r: write_h5_features(r / "dev_ims.h5", np.ones((3, 3, 6), np.float32)),
     "precomp", "dev_ims.npy and dev_ims.h5 hold the same features"),
    ("captions not UTF-8", lambda r: (r / "dev_caps.txt").write_bytes(b"a dog\n" * 14 + b"\xff\n"),
     "dev_caps.txt", "not valid UTF-8"),
]


@pytest.mark.parametrize(("what", "breaker", "where", "message"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_precomp_directories(good, capsys, what, breaker, where, message):
    breaker(good)
    code, out, err = cli(["data", "check", str(good)], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and out == ""
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {good}") and where in lines[0] and message in lines[0], lines[0]


def test_every_broken_split_is_listed(good, capsys):
    _drop_line(good / "train_caps.txt", 1)
    _nan_row(good)
    _replace_line(good / "dev_caps.txt", 3, "")
    code, _, err = cli(["data", "check", str(good)], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 2
    assert "train_caps.txt" in lines[0] and "dev_caps.txt: line 3" in lines[1]


def test_standard_split_sizes_are_recognised(tmp_path, capsys):
    sizes = {"train": 29000, "dev": 1000, "test": 1000}
    splits = {n: Split(n, ["a dog"] * (5 * k), 5, global_feats=np.zeros((k, 1), np.float32)) for n, k in sizes.items()}
    write_precomp(tmp_path, splits)
    code, out, _ = cli(["data", "check", str(tmp_path)], capsys)
    assert code == 0 and "split sizes match the standard Flickr30K splits" in out


# ---------------------------------------------------------------------------------
# Other layouts and single files
# ---------------------------------------------------------------------------------


def _labelled(root: Path) -> Path:
    from xmrbench.data.labelled import labelled_from_arrays, write_labelled

    rng = np.random.default_rng(1)
    data = labelled_from_arrays(
        "mini", {s: (rng.random((n, 4), dtype=np.float32), rng.random((n, 5), dtype=np.float32),
                     rng.integers(0, 3, n)) for s, n in (("train", 6), ("test", 4))}, ["a", "b", "c"])
    return write_labelled(root, data)


def _entities(root: Path) -> Path:
    from xmrbench.data.synthetic.entities import generate_entities

    splits = generate_entities(size="tiny", region_dim=4)
    small = {}
    for name in ("dev",):
        s = splits[name]
        n = 6
        cut = int(s.proposal_offsets[n])
        s.captions, s.phrases, s.entities = s.captions[: 5 * n], s.phrases[: 5 * n], s.entities[:n]
        s.sizes, s.proposal_offsets = s.sizes[:n], s.proposal_offsets[: n + 1]
        s.proposal_boxes, s.proposal_feats = s.proposal_boxes[:cut], s.proposal_feats[:cut]
        small[name] = s
    return write_entities(root, small)


def test_labelled_layout(tmp_path, capsys):
    root = _labelled(tmp_path / "lab")
    assert detect_layout(root) == "labelled"
    code, out, _ = cli(["data", "check", str(root)], capsys)
    assert code == 0 and "3 classes, single labels" in out and "train: 6 pairs; image 4-d, text 5-d" in out
    np.save(root / "test_labels.npy", np.array([0, 1, 7, 2]))
    code, _, err = cli(["data", "check", str(root)], capsys)
    assert code == 2 and err.strip() == (f"error: {root / 'test_labels.npy'}: labels row 2 holds class 7, "
                                         "outside 0..2")


def test_entities_layout(tmp_path, capsys):
    root = _entities(tmp_path / "ent")
    assert detect_layout(root) == "entities"
    code, out, _ = cli(["data", "check", str(root)], capsys)
    assert code == 0 and "dev: 6 images x 5 captions" in out and "proposal upper bound" in out
    lines = (root / "dev_phrases.jsonl").read_text().splitlines()
    lines[3] = json.dumps([{"start": 0, "end": 1, "entity": "unicorn", "type": "animals"}])
    (root / "dev_phrases.jsonl").write_text("\n".join(lines) + "\n")
    code, _, err = cli(["data", "check", str(root)], capsys)
    assert code == 2 and err.strip().splitlines() == [
        f"error: {root / 'dev_phrases.jsonl'}: line 4: phrase refers to entity 'unicorn', which its image does "
        "not have"]


def test_single_files(tmp_path, capsys):
    vec = write_word_vectors(tmp_path / "glove.txt", ["a", "b"], np.ones((2, 3), np.float32))
    code, out, _ = cli(["data", "check", str(vec)], capsys)
    assert code == 0 and "word vectors glove.txt: 2 words x 3 dims" in out
    vec.write_text("a 1 2 3\nb 1 2\n")
    code, _, err = cli(["data", "check", str(vec)], capsys)
    assert code == 2 and "glove.txt: line 2: 2 values, expected 3" in err
    voc = write_vocab_file(Vocabulary([*SPECIALS, "dog"]), tmp_path / "v.json", order="adapt")
    code, out, _ = cli(["data", "check", str(voc)], capsys)
    assert code == 0 and "1 words (adapt order)" in out


def test_unknown_layouts(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = cli(["data", "check", str(tmp_path / "empty")], capsys)
    assert code == 2 and "no known layout" in err
    code, _, err = cli(["data", "check", str(tmp_path / "nowhere")], capsys)
    assert code == 2 and "no such file or directory" in err
    assert not check_path(tmp_path / "nowhere").ok
