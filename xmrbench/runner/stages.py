"""Training stages: the weights and artifacts a cell's run takes from other runs.

A row may declare ``needs`` (``recipe/schema.py``): start from another row's
selected model (``init``), and read artifacts a miner derives from another row's
model (``artifacts``). The driver starts a run only once the runs it needs (same
seed) are stored (``RunTask.after``; a cell's stage, one more than its deepest
dependency's, orders the queue). This module fetches what they produced:

- ``initial_weights``: the selected weights of the ``init`` cell's run of the same seed;
- ``artifact``: the artifact of the same seed, read from the store if present, else
  computed under a lock and written atomically. It is addressed by a content hash of
  its source run (cell hash and seed), its miner, the miner's version and parameters
  (``ArtifactRef.key``), so every cell that names the same artifact, in any recipe of
  the store, shares one file, and a killed computation leaves no file behind (its
  next run computes it again).
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from xmrbench.engine.miners import MINERS
from xmrbench.engine.train import load_plain
from xmrbench.errors import StoreError
from xmrbench.recipe.resolve import ArtifactRef, Cell, ResolvedRecipe
from xmrbench.runner.locks import RunLock
from xmrbench.runner.stored import load_member, write_plain
from xmrbench.store.store import ResultStore

#: Version of the artifact file layout (``{"kind", "version", "meta", "tensors"}``).
ARTIFACT_VERSION = 1


def initial_weights(store: ResultStore, resolved: ResolvedRecipe, source: Cell, seed: int, cache: Any,
                    device: torch.device) -> dict[str, torch.Tensor]:
    """The selected weights of ``source``'s stored run of ``seed`` (on the CPU)."""
    model, _ = load_member(store, resolved, source, seed, cache, device)
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def artifact_state(store: ResultStore, ref: ArtifactRef, seed: int) -> str:
    """``done`` or ``missing``. An artifact is written atomically, so a present file is a
    finished one; it is not read here (it may be large), and one that turns out torn or
    foreign when a run reads it is computed again then."""
    return "done" if store.artifact_path(ref.miner, ref.key(seed)).is_file() else "missing"


def artifact(store: ResultStore, resolved: ResolvedRecipe, ref: ArtifactRef, seed: int, cache: Any,
             device: torch.device, *, warn: Callable[[str], None] | None = None,
             stop_requested: Callable[[], bool] | None = None) -> dict[str, Any]:
    """The tensors of artifact ``ref`` for ``seed``: read, or computed once and stored."""
    key = ref.key(seed)
    path = store.artifact_path(ref.miner, key)
    if path.is_file():
        try:
            return _read(path, ref, seed)
        except StoreError as exc:  # torn or foreign: compute it again
            if warn is not None:
                warn(f"{exc.one_line()}; computing it again")
    lock = RunLock(store.artifact_lock_path(ref.miner, key))
    if not lock.acquire(wait=True, stop_requested=stop_requested):
        raise KeyboardInterrupt  # stopped while another process computes it
    try:
        if path.is_file():  # computed by another process meanwhile
            try:
                return _read(path, ref, seed)
            except StoreError:
                pass
        tensors, meta = _compute(store, resolved, ref, seed, cache, device)
        payload = {"kind": "xmrbench.artifact", "version": ARTIFACT_VERSION, "meta": meta, "tensors": tensors}
        write_plain(payload, path, what="the artifact")
        return tensors
    finally:
        lock.release()


def _compute(store, resolved, ref: ArtifactRef, seed: int, cache, device) -> tuple[dict[str, Any], dict[str, Any]]:
    t0 = time.perf_counter()
    model, prepared = load_member(store, resolved, ref.source, seed, cache, device)
    miner = MINERS[ref.miner](ref.params)
    cfg = ref.source.config
    assert cfg is not None
    split = prepared.split(miner.split)
    tensors = miner.mine(model, split, device=device, batch_size=cfg.eval.batch_size,
                         block_images=cfg.eval.block_images)
    tensors = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in tensors.items()}
    meta = {
        "miner": ref.miner,
        "miner_version": MINERS[ref.miner].version,
        "params": ref.params.model_dump(mode="json"),
        "source": {"recipe": resolved.id, "cell": ref.source.id, "hash": ref.source.hash, "seed": seed},
        "key": ref.key(seed),
        "seconds": time.perf_counter() - t0,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    return tensors, meta


def _read(path: Path, ref: ArtifactRef, seed: int) -> dict[str, Any]:
    doc = load_plain(path, what="artifact", map_location="cpu")
    if doc.get("kind") != "xmrbench.artifact" or doc.get("version") != ARTIFACT_VERSION:
        raise StoreError("cannot read artifact: not an xmrbench artifact of this version", where=str(path))
    meta, tensors = doc.get("meta"), doc.get("tensors")
    if not isinstance(meta, dict) or meta.get("key") != ref.key(seed) or not isinstance(tensors, dict):
        raise StoreError("cannot read artifact: it is not the one its name says", where=str(path))
    return tensors
