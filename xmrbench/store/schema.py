"""The result document: one JSON file per (recipe, cell, seed).

It records everything needed to rerun the cell from the file alone (the full
resolved config, seed, dataset fingerprint, code version) and everything the
report needs (metrics per protocol, per-query ranks, curves, timings, the protocol
fingerprint). Any change of this schema bumps ``SCHEMA_VERSION`` and adds one
migration function to ``MIGRATIONS``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from xmrbench.config import PLATEAU_DEFAULTS
from xmrbench.core.convergence import Convergence, of_record
from xmrbench.store.stamps import changed_files

SCHEMA_VERSION = 2
KIND = "xmrbench.result"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecipeRef(_Model):
    id: str
    path: str
    hash: str
    paper: str
    table: str
    profile: str


class CellRef(_Model):
    id: str
    label: str
    row: str
    point: dict[str, Any] = {}
    hash: str


class DatasetRef(_Model):
    name: str
    fingerprint: str
    info: dict[str, Any] = {}


class ResultDoc(_Model):
    schema_version: int
    kind: Literal["xmrbench.result"] = KIND
    status: Literal["done"] = "done"
    recipe: RecipeRef
    cell: CellRef
    seed: int
    config: dict[str, Any]
    dataset: DatasetRef
    protocols: dict[str, dict[str, Any]]  # protocol name -> protocol fingerprint
    metrics: dict[str, dict[str, float]]  # protocol (and "dev") -> metric key -> value
    ranks: dict[str, dict[str, list[int]]] = {}  # protocol -> {"i2t": [...], "t2i": [...]} (0-based)
    curves: dict[str, list[float]] = {}
    best_epoch: int | None = None
    n_params: int | None = None
    timing: dict[str, float] = {}
    env: dict[str, Any] = {}
    created: str
    resumed_from_epoch: int | None = None
    # "<recipe>/<run>" of the stored run whose model this run evaluated instead of
    # training (the same training config, other protocols: runner/adopt.py); None: trained here
    trained_by: str | None = None
    # size and modification time of each file the config names, taken when the run
    # started (store/stamps.py); a run whose files changed since is stale. None: a
    # document from before stamps were kept
    files: dict[str, list[int]] | None = None
    # whether the run converged (core/convergence.py: Convergence.to_dict); None: not
    # recorded (a version-1 document; readers derive it from ``curves``)
    convergence: dict[str, Any] | None = None

    def changed_files(self) -> list[str]:
        """The files this run read that have changed since it started (store/stamps.py)."""
        return changed_files(self.files, self.config)

    def convergence_record(self) -> Convergence | None:
        """Whether this run converged: the record it carries, else derived from its curves
        and train config (None: nothing to judge by, an ensemble written before records)."""
        return of_record(self.convergence, self.curves, self.config.get("train", {}), PLATEAU_DEFAULTS)


#: version N -> function turning a version-N document (dict) into version N+1.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {
    1: lambda doc: {**doc, "schema_version": 2, "convergence": None},  # convergence recorded from version 2
}


def migrate(doc: dict[str, Any]) -> dict[str, Any]:
    """Bring an older document up to ``SCHEMA_VERSION`` (raises ValueError if impossible)."""
    version = doc.get("schema_version")
    if not isinstance(version, int):
        raise ValueError("no schema_version")
    if version > SCHEMA_VERSION:
        raise ValueError(f"schema_version {version} is newer than this xmrbench understands ({SCHEMA_VERSION})")
    while version < SCHEMA_VERSION:
        if version not in MIGRATIONS:
            raise ValueError(f"no migration from schema_version {version}")
        doc = MIGRATIONS[version](doc)
        version = doc["schema_version"]
    return doc
