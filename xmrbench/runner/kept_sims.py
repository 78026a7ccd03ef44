"""An ensemble member's final similarity matrices, kept until its ensemble has averaged them.

An ensemble cell (``ensemble: [a, b]``) is evaluated by averaging its members'
similarity matrices, seed by seed. Without this module the ensemble run scores every
member again on every protocol, which for a cross-attention model is the dearest step
of all: on the synthetic world's 5,000-image test split one SCAN member spends about
13 minutes (one CPU thread) scoring the 5K matrix and its five 1K folds, against 20
seconds per training epoch, so an ensemble doubled the evaluation cost of its members.

When the driver schedules an ensemble run together with the runs of its members, each
such member run writes the matrices of its image-text protocols, the very ones its own
metrics come from, to ``<store>/<recipe>/.sims/<run>/`` (one ``<protocol>.npy`` of
shape ``(folds, images, captions)``, float32, and ``kept.json``). The ensemble run
averages those instead of scoring the member again, and the folder is removed once
every ensemble that lists the member has its result for that seed.

Keeping is bounded. The driver queues each ensemble right after its last member, so
an ensemble usually frees its members' matrices as soon as they are both stored; but a
worker may still pick up other members first, and a recipe with many members (AOQ
Table 1 has 48 member runs, 600 MB each at the 5K size) could otherwise fill a disk. A matrix is kept only while the recipe's kept and pending
matrices stay within :data:`KEEP_BUDGET_BYTES` and the disk keeps :data:`MIN_FREE_BYTES`
free; beyond that the ensemble scores the member again, as it always did.

A kept folder is used only if ``kept.json`` names the sha256 of the member's stored
model file (a member recomputed since is scored again) and its shapes fit the split.
A kept matrix is what scoring the stored model again computes (same weights, inputs
and code), so the ensemble's numbers do not depend on whether one was kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from xmrbench.core.metrics.protocols import PROTOCOLS
from xmrbench.errors import StoreError
from xmrbench.recipe.resolve import Cell, ResolvedRecipe
from xmrbench.store.store import ResultStore

KEPT_FILE = "kept.json"
PENDING = "sims"  # inside the run's work dir, until the model is stored
KEEP_BUDGET_BYTES = 8 * 2**30  # kept and pending matrices of one recipe in one store
MIN_FREE_BYTES = 4 * 2**30  # never keep a matrix that would leave less free on the disk


def kept_dir(store: ResultStore, recipe_id: str, cell: Cell, seed: int) -> Path:
    return store.recipe_dir(recipe_id) / ".sims" / store.run_name(cell.id, cell.hash or "", seed)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class SimsKeeper:
    """Collects a member run's image-text matrices in its work dir; :meth:`seal` moves
    them to the kept folder once the model they belong to is stored."""

    def __init__(self, work_dir: Path, target: Path):
        self.pending = work_dir / PENDING
        self.target = target
        self.shapes: dict[str, list[int]] = {}

    def _room_for(self, nbytes: int) -> bool:
        recipe_dir = self.target.parent.parent
        held = sum(p.stat().st_size for pattern in (".sims/*/*.npy", ".work/*/sims/*.npy")
                   for p in recipe_dir.glob(pattern) if p.is_file())
        free = shutil.disk_usage(recipe_dir).free
        return held + nbytes <= KEEP_BUDGET_BYTES and free - nbytes >= MIN_FREE_BYTES

    def __call__(self, protocol: str, matrices: list[torch.Tensor]) -> None:
        if PROTOCOLS[protocol].task != "image_text" or not matrices:
            return  # an ensemble averages image-text matrices only
        nbytes = sum(m.numel() for m in matrices) * 4
        self.pending.mkdir(parents=True, exist_ok=True)
        if not self._room_for(nbytes):
            return  # the ensemble scores this member again
        array = torch.stack([m.float().cpu() for m in matrices]).numpy()
        path = self.pending / f"{protocol}.npy"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as fh:
                np.save(fh, array)
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"cannot keep the similarity matrices ({exc.strerror or exc})", where=str(path)) from None
        self.shapes[protocol] = list(array.shape)

    def seal(self, model_path: Path) -> None:
        """Bind the matrices to the stored model and move them to the kept folder."""
        if not self.shapes:
            return
        meta = {"model_sha256": file_sha256(model_path), "protocols": self.shapes}
        (self.pending / KEPT_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        shutil.rmtree(self.target, ignore_errors=True)
        for attempt in range(2):  # another process may remove the empty parent meanwhile (release)
            self.target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(self.pending, self.target)
                return
            except FileNotFoundError:
                if attempt:
                    raise


def load_kept(folder: Path, protocol: str, *, model_path: Path, images: int, captions: int,
              folds: int) -> list[torch.Tensor] | None:
    """The kept fold matrices of ``protocol``, or None when there are none or they do
    not belong to the model at ``model_path`` or to a split of this size."""
    try:
        meta = json.loads((folder / KEPT_FILE).read_text(encoding="utf-8"))
        shape = meta["protocols"][protocol]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if shape != [folds, images // folds, captions // folds]:
        return None
    try:
        if meta.get("model_sha256") != file_sha256(model_path):
            return None
        array = np.load(folder / f"{protocol}.npy", allow_pickle=False)
    except (OSError, ValueError):
        return None
    if list(array.shape) != shape or array.dtype != np.float32:
        return None
    return list(torch.from_numpy(array).unbind(0))


def ensembles_of(resolved: ResolvedRecipe, member_id: str) -> list[Cell]:
    return [c for c in resolved.cells if c.members and any(m.id == member_id for m in c.members)]


def release(store: ResultStore, resolved: ResolvedRecipe, members: Iterable[Cell], seed: int) -> None:
    """Remove the kept matrices of ``members`` (seed ``seed``) that no ensemble still needs."""
    for member in members:
        folder = kept_dir(store, resolved.id, member, seed)
        if not folder.exists():
            continue
        pending = [e for e in ensembles_of(resolved, member.id)
                   if store.status(resolved.id, e.id, e.hash, seed).state != "done"]  # type: ignore[arg-type]
        if not pending:
            shutil.rmtree(folder, ignore_errors=True)
            try:
                folder.parent.rmdir()  # the last one
            except OSError:
                pass
