"""Adopting a stored run for another cell with the same content hash.

Two cells with one content hash train the same thing: a row the paper prints twice
(ADAPT Table 3's "ADAPT-T2I" and "ADAPT-T2I (lambda = 10)"), or a cell several recipes
share in the regression gate. Such a run is computed once; the other cell gets a copy
of its result document (with its own recipe and cell references) and of its model.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from xmrbench.recipe.resolve import Cell, ResolvedRecipe
from xmrbench.store.schema import CellRef, RecipeRef, ResultDoc
from xmrbench.store.store import ResultStore


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
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")  # a dead copier's is cleaned as any temporary
        shutil.copyfile(model, tmp)
        tmp.replace(target)
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
