"""Adopting a stored run, or a stored run's training, for another cell.

Two cells with one content hash train the same thing: a row the paper prints twice
(ADAPT Table 3's "ADAPT-T2I" and "ADAPT-T2I (lambda = 10)"), or a cell several recipes
share in the regression gate. Such a run is computed once; the other cell gets a copy
of its result document (with its own recipe and cell references) and of its model.

Two cells whose configs differ only in what they report (``eval.protocols``,
``eval.sentence_retrieval``, ``eval.store_ranks``) train the same model too: ADAPT's
Table 1 reports ADAPT-T2I on the test split, Table 3 the same model on the validation
split. Their *training hash* is equal. Every training run leaves a reference to itself
under ``<results>/_trained/``, keyed by training hash and seed; a run of another cell
with that training hash and seed evaluates the stored model on its own protocols
instead of training again (``run_one``), and its result names the source
(``trained_by``).

A run that stopped early at its plateau, after ``e`` epochs, is also the run of any
larger epoch budget: the loop stops at the same epoch with the same weights, unless
something reads the budget itself. So a run whose config differs from a stored one only
in ``train.epochs`` evaluates that stored model too, when early stopping is on, the
method does not read the budget (``TrainingMethod.reads_epoch_budget``; ``Progress``
fails a method that reads it undeclared), and the stored run stopped before the new
budget. Such runs leave a second reference, ``_trained/open-<hash>--seed<k>.ref``, keyed
by the training hash without ``train.epochs`` (:func:`open_budget_hash`). Raising a
budget then trains only the runs the old budget cut short, and those resume: such a run
keeps its last checkpoint as ``_trained/open-<hash>--seed<k>--epoch<n>.ckpt``
(:func:`keep_checkpoint`), and a run of the same open hash with a budget above ``n``
starts from it (:func:`restore_checkpoint`), as an interrupted run resumes.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from xmrbench.config import REPORTING_KEYS, training_hash
from xmrbench.engine.methods import method_of
from xmrbench.errors import StoreError
from xmrbench.recipe.resolve import Cell, ResolvedRecipe
from xmrbench.store.schema import CellRef, RecipeRef, ResultDoc
from xmrbench.store.stamps import file_stamps
from xmrbench.store.store import ResultStore, atomic_write_text, safe_name

__all__ = ["REPORTING_KEYS", "file_stamps", "training_hash"]  # re-exported for callers of this module


def trained_ref_path(store: ResultStore, train_hash: str, seed: int) -> Path:
    """Where the reference to the stored training run of ``train_hash`` and ``seed`` lives
    (the leading underscore keeps the folder apart from recipe folders)."""
    return store.root / "_trained" / f"{safe_name(train_hash)}--seed{seed}.ref"


def open_budget_hash(config: dict[str, Any]) -> str | None:
    """The training hash of ``config`` without ``train.epochs``, when a run that stops early
    gives the same model under any larger budget: early stopping on and a gradient method
    that does not read the budget. None otherwise (and for ensembles)."""
    method = method_of(config)
    train = config.get("train") or {}
    if method is None or not method.gradient_based or method.reads_epoch_budget or not train.get("early_stop"):
        return None
    return "open-" + training_hash({**config, "train": {k: v for k, v in train.items() if k != "epochs"}})


def open_ref_path(store: ResultStore, config: dict[str, Any], seed: int) -> Path | None:
    """Where the reference to a run of ``config``'s open budget hash lives (None: no such hash)."""
    key = open_budget_hash(config)
    return None if key is None else trained_ref_path(store, key, seed)


def _kept_path(store: ResultStore, key: str, seed: int, epochs: int | str) -> Path:
    """Where the kept last checkpoint of a run of open hash ``key`` and ``seed`` that
    trained ``epochs`` epochs lives (``"*"``: the glob of them all)."""
    ref = trained_ref_path(store, key, seed)
    return ref.with_name(f"{ref.name.removesuffix('.ref')}--epoch{epochs}.ckpt")


def _kept_checkpoints(store: ResultStore, key: str, seed: int) -> list[tuple[int, Path]]:
    """The kept last checkpoints of runs of open hash ``key`` and ``seed``: (epochs, path), fewest first."""
    pattern = _kept_path(store, key, seed, "*")
    head, tail = pattern.name.split("*")
    found = []
    for path in pattern.parent.glob(pattern.name):
        epochs = path.name.removeprefix(head).removesuffix(tail)
        if epochs.isdigit():
            found.append((int(epochs), path))
    return sorted(found)


def _copy_atomic(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` through a temporary (a dead copier's is cleaned as any temporary)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.copyfile(source, tmp)
    tmp.replace(target)


def restore_checkpoint(store: ResultStore, config: dict[str, Any], seed: int, work: Path) -> int | None:
    """Start a run of ``config`` that has no checkpoint of its own from the kept last
    checkpoint of a run with its open budget hash and fewer epochs than its budget (the
    most such epochs): copied into ``work``. Returns those epochs, or None."""
    key = open_budget_hash(config)
    own = work / "checkpoint.pt"
    if key is None or own.exists():
        return None
    fitting = [(n, path) for n, path in _kept_checkpoints(store, key, seed) if n < config["train"]["epochs"]]
    if not fitting:
        return None
    epochs, path = fitting[-1]
    _copy_atomic(path, own)
    return epochs


def keep_checkpoint(store: ResultStore, config: dict[str, Any], seed: int, work: Path,
                    stopped_early: bool, epochs: int) -> None:
    """After a run of ``config`` that trained ``epochs`` epochs: keep its last checkpoint
    (in ``work``) when it ended at its budget, for a larger budget to resume, and drop the
    kept checkpoints it outgrew; a run that stopped early outgrew them all (its model is
    the larger budgets' run). Call it before the run's work dir is removed."""
    key = open_budget_hash(config)
    if key is None:
        return
    kept = _kept_checkpoints(store, key, seed)
    last = work / "checkpoint.pt"
    if not stopped_early and last.is_file() and not any(n >= epochs for n, _ in kept):
        _copy_atomic(last, _kept_path(store, key, seed, epochs))
    for n, path in kept:
        if stopped_early or n < epochs:
            path.unlink(missing_ok=True)


def _stopped_early(doc: ResultDoc) -> int | None:
    """The epochs ``doc``'s run trained when it stopped early at its plateau, else None."""
    record = doc.convergence_record()
    return record.epochs if record is not None and record.stopped_early else None


def _refs_of(store: ResultStore, doc: ResultDoc) -> list[Path]:
    """The references ``doc``'s run (one that trained its model) leaves."""
    refs = [trained_ref_path(store, training_hash(doc.config), doc.seed)]
    open_ref = open_ref_path(store, doc.config, doc.seed)
    if open_ref is not None and _stopped_early(doc) is not None:
        refs.append(open_ref)
    return refs


def record_training(store: ResultStore, doc: ResultDoc) -> None:
    """Leave the references to ``doc``'s run (a run that trained its model) for cells with
    its training hash (and, when it stopped early, its open budget hash), with its
    dataset's fingerprint and the stamps of the files its config names; the first usable
    run of a hash and seed keeps the reference."""
    ref = {"recipe": doc.recipe.id, "cell": doc.cell.id, "hash": doc.cell.hash,
           "dataset": doc.dataset.fingerprint,
           "files": doc.files if doc.files is not None else file_stamps(doc.config)}
    for path in _refs_of(store, doc):
        if path.exists() and _lookup(store, path, doc.config, doc.seed, None) is not None:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            atomic_write_text(path, json.dumps(ref) + "\n")
        except StoreError:
            pass  # the run itself is stored; the reference is an index the next reproduce repairs


def _writer_gone(path: Path, older_than_s: float) -> bool:
    """Whether the process that wrote the temporary ``.<name>.<pid>.tmp`` is gone: no such
    process here, or the file is older than any write takes."""
    try:
        if time.time() - path.stat().st_mtime > older_than_s:
            return True
        os.kill(int(path.name.rsplit(".", 2)[-2]), 0)
    except (ProcessLookupError, ValueError):
        return True
    except OSError:  # gone meanwhile, or alive under another user
        return False
    return False


def repair_training_refs(store: ResultStore, recipe_id: str, *, older_than_s: float) -> int:
    """Undo what a kill during :func:`record_training` leaves: a temporary under
    ``_trained/`` and no reference. Removes the temporaries whose writer is gone and writes
    the missing reference of every stored run of ``recipe_id`` that trained its model.
    Returns how many references were written."""
    folder = store.root / "_trained"
    if not folder.is_dir():
        return 0
    for tmp in folder.glob(".*.tmp"):
        if _writer_gone(tmp, older_than_s):
            tmp.unlink(missing_ok=True)
    written = 0
    for doc in _trained_runs(store, recipe_id):
        if not all(path.exists() for path in _refs_of(store, doc)):
            record_training(store, doc)
            written += 1
    return written


def _trained_runs(store: ResultStore, recipe_id: str) -> Iterator[ResultDoc]:
    """The stored runs of ``recipe_id`` that trained their model and still have it."""
    for _, doc, _problem in store.iter_results(recipe_id):
        if doc is None or doc.trained_by is not None or doc.cell.hash is None or "model" not in doc.config:
            continue  # unreadable, evaluated from another run's model, or an ensemble
        if store.model_path(recipe_id, doc.cell.id, doc.cell.hash, doc.seed).is_file():
            yield doc


def find_training(store: ResultStore, config: dict[str, Any], seed: int,
                  dataset: str | None = None) -> tuple[ResultDoc, Path] | None:
    """A stored run, of any recipe in the store, that trained ``config``'s model with
    ``seed``: its result document and model file. That is a run with ``config``'s training
    hash, else one with its open budget hash that stopped early before ``config``'s
    ``train.epochs``. None if there is none, or if the reference is stale: the result or
    model gone or recomputed under another config, a file the config names changed
    since, or (when ``dataset`` is given) the data's fingerprint differs."""
    found = _lookup(store, trained_ref_path(store, training_hash(config), seed), config, seed, dataset)
    open_ref = open_ref_path(store, config, seed)
    if found is None and open_ref is not None:
        found = _lookup(store, open_ref, config, seed, dataset)
    return found


def _lookup(store: ResultStore, path: Path, config: dict[str, Any], seed: int,
            dataset: str | None) -> tuple[ResultDoc, Path] | None:
    """The run the reference at ``path`` names, if it trained ``config``'s model (see
    :func:`find_training`)."""
    try:
        ref = json.loads(path.read_text(encoding="utf-8"))
        recipe, cell, chash = str(ref["recipe"]), str(ref["cell"]), str(ref["hash"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if ref.get("files") != file_stamps(config) or (dataset is not None and ref.get("dataset") != dataset):
        return None
    status = store.status(recipe, cell, chash, seed)
    model = store.model_path(recipe, cell, chash, seed)
    if status.state != "done" or status.doc is None or not model.is_file() or status.doc.trained_by is not None:
        return None
    doc = status.doc
    if training_hash(doc.config) == training_hash(config):
        return doc, model
    stopped, key = _stopped_early(doc), open_budget_hash(config)
    if key is not None and open_budget_hash(doc.config) == key and stopped is not None \
            and stopped < config["train"]["epochs"]:
        return doc, model
    return None


def adopt_run(store: ResultStore, resolved: ResolvedRecipe, cell: Cell, seed: int, doc: ResultDoc,
              model: Path) -> Path:
    """Store ``doc`` (a run of a cell with ``cell``'s hash, same seed) and its ``model`` as ``cell``'s run."""
    recipe = resolved.recipe
    moved = doc.model_copy(update={
        "recipe": RecipeRef(id=resolved.id, path=str(resolved.path), hash=resolved.hash, paper=recipe.paper,
                            table=recipe.table, profile=resolved.profile),
        "cell": CellRef(id=cell.id, label=cell.label, row=cell.row.id, point=cell.point, hash=cell.hash),
    })
    target = store.model_path(resolved.id, cell.id, cell.hash, seed)  # type: ignore[arg-type]
    target.parent.mkdir(parents=True, exist_ok=True)
    if model.is_file() and model != target:
        _copy_atomic(model, target)
    return store.write(moved)


def twins(resolved: ResolvedRecipe) -> dict[str, Cell]:
    """Trained cells whose hash an earlier runnable cell of the recipe has: id -> that cell
    (whether or not ``--rows`` selected it)."""
    first: dict[str, Cell] = {}
    out: dict[str, Cell] = {}
    for cell in resolved.cells:
        if not cell.runnable or cell.members or cell.hash is None:
            continue
        source = first.setdefault(cell.hash, cell)
        if source is not cell:
            out[cell.id] = source
    return out


def index_trainings(store: ResultStore) -> int:
    """Leave the references of a store written before they existed (no ``_trained/``
    folder): every stored run that trained its model. Returns how many were written; a
    store that has the folder is left as it is (its runs wrote their own)."""
    if (store.root / "_trained").is_dir() or not store.root.is_dir():
        return 0
    written = 0
    for recipe_id in store.recipe_ids():
        for doc in _trained_runs(store, recipe_id):
            record_training(store, doc)
            written += 1
    (store.root / "_trained").mkdir(exist_ok=True)
    return written

