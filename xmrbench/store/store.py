"""The results store: a directory of JSON documents, one per (recipe, cell, seed).

Layout under the store root (``results/`` by default)::

    <recipe-id>/
        <cell>--<cell-hash>--seed<k>.json    result documents
        models/<same name>.pt                the selected model's weights
        resolved/<recipe-hash>.json          each resolved recipe that wrote here
        .work/<same name>/checkpoint.pt      per-epoch checkpoints of unfinished runs
        .work/<same name>.lock               the run's lock (see runner/locks.py)

Writes are atomic (temporary file in the same directory, fsync, rename), so a
crash leaves either the old state or the new one, never a torn file. Leftover
temporary files from a killed process are removed by the next writer of the same run
(under the run's lock), or after an hour by any writer of the recipe. A document
that does not parse or validate is reported as corrupt and recomputed, never used.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from xmrbench.errors import StoreError
from xmrbench.store.schema import ResultDoc, migrate

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_TMP = re.compile(r"^\..+\.\d+\.tmp$")


def safe_name(text: str) -> str:
    return _SAFE.sub("_", text).strip("_") or "_"


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never a mix."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise StoreError(f"cannot write result ({exc.strerror or exc})", where=str(path)) from None
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


@dataclass(frozen=True)
class Status:
    state: Literal["done", "missing", "corrupt", "stale"]  # stale: a file its config names changed
    path: Path
    doc: ResultDoc | None = None
    problem: str | None = None


class ResultStore:
    def __init__(self, root: str | Path = "results"):
        self.root = Path(root)

    # -- paths ------------------------------------------------------------
    def recipe_dir(self, recipe_id: str) -> Path:
        return self.root / safe_name(recipe_id)

    @staticmethod
    def run_name(cell_id: str, cell_hash: str, seed: int) -> str:
        return f"{safe_name(cell_id)}--{cell_hash}--seed{seed}"

    def result_path(self, recipe_id: str, cell_id: str, cell_hash: str, seed: int) -> Path:
        return self.recipe_dir(recipe_id) / f"{self.run_name(cell_id, cell_hash, seed)}.json"

    def model_path(self, recipe_id: str, cell_id: str, cell_hash: str, seed: int) -> Path:
        return self.recipe_dir(recipe_id) / "models" / f"{self.run_name(cell_id, cell_hash, seed)}.pt"

    def work_dir(self, recipe_id: str, cell_id: str, cell_hash: str, seed: int) -> Path:
        return self.recipe_dir(recipe_id) / ".work" / self.run_name(cell_id, cell_hash, seed)

    def lock_path(self, recipe_id: str, cell_id: str, cell_hash: str, seed: int) -> Path:
        """The run's lock file (beside its work dir, which is removed when the run finishes)."""
        return self.recipe_dir(recipe_id) / ".work" / f"{self.run_name(cell_id, cell_hash, seed)}.lock"

    def artifact_dir(self) -> Path:
        """Derived artifacts (mined candidate lists, say), shared by every recipe of the store.

        The leading underscore keeps the folder apart from recipe folders (a recipe id
        starts with a letter or digit).
        """
        return self.root / "_artifacts"

    def artifact_path(self, miner: str, key: str) -> Path:
        return self.artifact_dir() / f"{safe_name(miner)}--{key}.pt"

    def artifact_lock_path(self, miner: str, key: str) -> Path:
        return self.artifact_dir() / f".{safe_name(miner)}--{key}.lock"

    # -- reading ----------------------------------------------------------
    def read(self, path: Path) -> ResultDoc:
        """Parse and validate one document; StoreError (naming the file) if it is unusable."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StoreError("result file not found", where=str(path)) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StoreError(f"corrupted result file ({exc.__class__.__name__})", where=str(path)) from None
        if not isinstance(raw, dict):
            raise StoreError("corrupted result file (not a JSON object)", where=str(path))
        try:
            raw = migrate(raw)
            return ResultDoc(**raw)
        except (ValueError, ValidationError, TypeError) as exc:
            first = exc.errors()[0] if isinstance(exc, ValidationError) else None
            why = f"{'.'.join(map(str, first['loc']))}: {first['msg']}" if first else str(exc)
            raise StoreError(f"invalid result file ({why})", where=str(path)) from None

    def status(self, recipe_id: str, cell_id: str, cell_hash: str, seed: int) -> Status:
        path = self.result_path(recipe_id, cell_id, cell_hash, seed)
        if not path.exists():
            return Status("missing", path)
        try:
            doc = self.read(path)
        except StoreError as exc:
            return Status("corrupt", path, problem=exc.message)
        if doc.cell.hash != cell_hash or doc.seed != seed:
            return Status("corrupt", path, problem="the file does not belong to this cell (hash or seed differ)")
        changed = doc.changed_files()
        if changed:
            return Status("stale", path, doc, problem="; ".join(changed))
        return Status("done", path, doc)

    def iter_results(self, recipe_id: str) -> Iterator[tuple[Path, ResultDoc | None, str | None]]:
        """Every result file of a recipe: (path, doc, None) or (path, None, problem)."""
        folder = self.recipe_dir(recipe_id)
        if not folder.is_dir():
            return
        for path in sorted(folder.glob("*.json")):
            try:
                yield path, self.read(path), None
            except StoreError as exc:
                yield path, None, exc.message

    def recipe_ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and not p.name.startswith(("_", ".")) and any(p.glob("*.json")))

    # -- benchmarks -------------------------------------------------------
    def bench_dir(self) -> Path:
        """``xmrbench bench`` runs, one JSON document each (the document ``--json`` prints)."""
        return self.root / "_bench"

    def write_bench(self, doc: dict[str, Any]) -> Path:
        """Store one bench document as ``_bench/bench-<created>--<cpu>.json`` (a counter added
        when a run of the same second is there already); returns its path."""
        stamp = re.sub(r"[^0-9T]", "", str(doc["created"]))[:15]
        cpu = safe_name(str(doc.get("env", {}).get("cpu") or "machine"))[:40]
        path = self.bench_dir() / f"bench-{stamp}--{cpu}.json"
        n = 1
        while path.exists():
            n += 1
            path = self.bench_dir() / f"bench-{stamp}--{cpu}-{n}.json"
        atomic_write_text(path, json.dumps(doc, indent=1, allow_nan=False) + "\n")
        return path

    def bench_docs(self) -> list[tuple[Path, dict[str, Any]]]:
        """Every stored bench document, oldest first; a file that does not parse is a one-line error."""
        out = []
        for path in sorted(self.bench_dir().glob("bench-*.json")):
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise StoreError(f"not a readable bench document ({exc})", where=str(path)) from None
            if not isinstance(doc, dict) or not isinstance(doc.get("kernels"), list):
                raise StoreError("not a bench document (no 'kernels' list)", where=str(path))
            out.append((path, doc))
        return sorted(out, key=lambda item: str(item[1].get("created", "")))

    # -- writing ----------------------------------------------------------
    def write(self, doc: ResultDoc) -> Path:
        path = self.result_path(doc.recipe.id, doc.cell.id, doc.cell.hash, doc.seed)
        text = json.dumps(doc.model_dump(mode="json"), indent=1, allow_nan=False)
        atomic_write_text(path, text + "\n")
        return path

    def save_resolved(self, resolved: dict[str, Any]) -> Path:
        path = self.recipe_dir(resolved["id"]) / "resolved" / f"{resolved['hash']}.json"
        if not path.exists():
            atomic_write_text(path, json.dumps(resolved, indent=1) + "\n")
        return path

    def finish_run(self, recipe_id: str, cell_id: str, cell_hash: str, seed: int) -> None:
        """Remove the checkpoints of a finished run."""
        shutil.rmtree(self.work_dir(recipe_id, cell_id, cell_hash, seed), ignore_errors=True)

    def clean_temporaries(self, recipe_id: str, *, older_than_s: float = 0.0) -> list[Path]:
        """Delete temporary files left by killed writers; returns what was removed.

        Another live process may be writing into the same store, so a caller that
        does not hold every run's lock passes ``older_than_s`` (no writer keeps a
        temporary file open for long); a run's own temporaries are removed under its
        lock by :meth:`clean_run_temporaries`.
        """
        folder = self.recipe_dir(recipe_id)
        removed = []
        now = time.time()
        if folder.is_dir():
            for path in folder.rglob(".*.tmp"):
                if not _TMP.match(path.name):
                    continue
                try:
                    if older_than_s and now - path.stat().st_mtime < older_than_s:
                        continue
                    path.unlink()
                except OSError:
                    continue
                removed.append(path)
        return removed

    def clean_run_temporaries(self, recipe_id: str, cell_id: str, cell_hash: str, seed: int) -> list[Path]:
        """Delete the temporaries of one run (its result, model and checkpoints); call it under the run's lock."""
        name = self.run_name(cell_id, cell_hash, seed)
        folder = self.recipe_dir(recipe_id)
        candidates = [
            *folder.glob(f".{name}.json.*.tmp"),
            *(folder / "models").glob(f".{name}.pt.*.tmp"),
            *self.work_dir(recipe_id, cell_id, cell_hash, seed).glob(".*.tmp"),
        ]
        removed = []
        for path in candidates:
            if _TMP.match(path.name):
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    @staticmethod
    def identity(path: Path) -> tuple[int, int, int] | None:
        """(inode, size, mtime in ns) of a file, or None if it does not exist: whether it was rewritten."""
        try:
            st = path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)
