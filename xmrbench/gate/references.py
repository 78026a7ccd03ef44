"""Reference documents of the gate's learning and replay layers.

One JSON file per recipe under ``results/reference/`` records, for every runnable cell
of the recipe's ``smoke`` profile, the metrics of every reference seed (for bit-exact
replay), and per evaluation protocol the learning check: the headline metric's values
over the seeds, their mean and spread, the chance level of the split, the learning
bar and the tolerance derived from the spread (see :mod:`xmrbench.gate.learning`). A
label-mAP check records its chance level as the other checks do: the mean of the chance
levels its runs recorded from the split's labels (:mod:`xmrbench.gate.chance`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from xmrbench.errors import StoreError
from xmrbench.store.store import atomic_write_text, safe_name

REFERENCE_KIND = "xmrbench.reference"
REFERENCE_VERSION = 2


def reference_path(reference_dir: Path, recipe_id: str) -> Path:
    return reference_dir / f"{safe_name(recipe_id)}.json"


def write_reference(path: Path, doc: dict[str, Any]) -> None:
    """Write a reference document atomically (``doc`` without kind and version)."""
    full = {"kind": REFERENCE_KIND, "version": REFERENCE_VERSION, **doc}
    atomic_write_text(path, json.dumps(full, indent=1, sort_keys=True, allow_nan=False) + "\n")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_document(path: Path, *, kind: str, version: int, what: str) -> dict[str, Any]:
    """A JSON document of ``kind`` and ``version`` written by the gate; StoreError naming the
    file when it is missing, unreadable, foreign or of another version (re-record it)."""
    where = str(path)
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StoreError(f"{what} file not found; record it with xmrbench check --update", where=where) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreError(f"corrupted {what} file ({exc.__class__.__name__}); record it again with "
                         "xmrbench check --update", where=where) from None
    if not isinstance(doc, dict) or doc.get("kind") != kind:
        raise StoreError(f"not a {what} file (kind is not {kind!r})", where=where)
    if doc.get("version") != version:
        raise StoreError(f"{what} version {doc.get('version')!r} is not {version}; record it again with "
                         "xmrbench check --update", where=where)
    return doc


def read_reference(path: Path) -> dict[str, Any]:
    """A reference document, validated; StoreError naming the file (and entry) if it is unusable."""
    where = str(path)
    doc = read_document(path, kind=REFERENCE_KIND, version=REFERENCE_VERSION, what="reference")
    if not isinstance(doc.get("recipe"), str) or not isinstance(doc.get("env"), dict):
        raise StoreError("corrupted reference file (recipe or env missing)", where=where)
    seeds = doc.get("seeds")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise StoreError("corrupted reference file (seeds missing)", where=where)
    cells = doc.get("cells")
    if not isinstance(cells, list):
        raise StoreError("corrupted reference file (cells missing)", where=where)
    for i, cell in enumerate(cells):
        key = f"cells[{i}]"
        ok = (isinstance(cell, dict) and isinstance(cell.get("cell"), str) and isinstance(cell.get("hash"), str)
              and cell.get("expect") in ("learns", "near_chance") and isinstance(cell.get("checks"), dict)
              and isinstance(cell.get("runs"), dict))
        if not ok:
            raise StoreError("corrupted reference file (a cell lacks cell, hash, expect, checks or runs)",
                             where=where, key=key)
        for proto, check in cell["checks"].items():
            fields = ("mean", "sd", "tolerance", "chance", "bar")
            if not (isinstance(check, dict) and isinstance(check.get("metric"), str)
                    and all(_number(check.get(f)) for f in fields)
                    and isinstance(check.get("values"), list) and all(_number(v) for v in check["values"])):
                raise StoreError("corrupted reference file (a learning check lacks its numbers)",
                                 where=where, key=f"{key}.checks.{proto}")
        for seed, metrics in cell["runs"].items():
            ok = (isinstance(metrics, dict) and all(
                isinstance(m, dict) and all(_number(v) for v in m.values())
                for m in metrics.values()))
            if not ok:
                raise StoreError("corrupted reference file (a run lacks numeric metrics)",
                                 where=where, key=f"{key}.runs.{seed}")
    return doc
