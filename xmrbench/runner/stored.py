"""Reading what a finished run stored: its selected model, rebuilt for evaluation
(ensembles average their members' models; a later training stage starts from one or
mines artifacts with it)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xmrbench.core.models.registry import MODELS
from xmrbench.engine.train import check_plain, load_plain
from xmrbench.errors import StoreError
from xmrbench.recipe.resolve import Cell, ResolvedRecipe
from xmrbench.store.store import ResultStore


def inputs_of(cfg) -> tuple[str, str]:
    """The (image, text) input kinds of a cell's model."""
    params = cfg.model.params
    return getattr(params, "image_input", "global"), getattr(params, "text_input", "tokens")


def load_member(store: ResultStore, resolved: ResolvedRecipe, cell: Cell, seed: int, cache: Any, device: torch.device):
    """A finished run's selected model, rebuilt from its stored weights, in eval mode.

    The file is read with ``weights_only=True`` (``load_plain``): a file holding
    anything but tensors, numbers, strings and plain containers is refused with a
    one-line ``StoreError`` naming it, never unpickled.
    """
    path = store.model_path(resolved.id, cell.id, cell.hash, seed)  # type: ignore[arg-type]
    if not path.is_file():
        raise StoreError(f"no stored model for {cell.id!r} seed {seed}; run reproduce for it first", where=str(path))
    state = load_state(path)
    cfg = cell.config
    prepared = cache.prepared(cfg.data, *inputs_of(cfg))  # type: ignore[union-attr]
    model = MODELS[cfg.model.name](cfg.model.params, prepared.dims)  # type: ignore[union-attr]
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # other shapes or keys: another model's weights
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise StoreError(f"stored weights do not fit {cell.id!r} ({first})", where=str(path)) from None
    return model.to(device).eval(), prepared


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """The weights of a stored model file, read with ``weights_only=True`` (``load_plain``)."""
    payload = load_plain(path, what="stored model", map_location="cpu")
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise StoreError("cannot read stored model: no state_dict of tensors", where=str(path))
    return state


def run_config(cell: Any) -> dict[str, Any]:
    """A training cell's config as its result stores it: the cell config, with ``needs``
    for a later stage."""
    return cell.stored_config()


def write_plain(payload: dict[str, Any], path: Path, *, what: str) -> None:
    """Write ``payload`` atomically (a temporary, fsync, rename; through a file object,
    so a full disk is a one-line ``StoreError``). It must be plain (``check_plain``), so
    that it is read back with ``weights_only=True`` and nothing in it ever runs."""
    check_plain(payload, path.name)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"cannot write {what} ({exc.strerror or exc})", where=str(path)) from None


def stored_embedder(store: ResultStore, cache: Any, device: torch.device | None = None):
    """``embed(resolved, cell, seed, split, images)`` for the report's t-SNE figures: the
    embeddings of the first ``images`` images of ``split`` and of all their captions by
    the stored model of run ``seed`` of ``cell``, as float arrays ``(n_img, D)``, ``(n_txt, D)``
    with the captions per image; None when the run has no stored model, or its model has
    no joint space (cross-attention models score pairs instead). ``cache`` is a
    :class:`~xmrbench.runner.run.DataCache`."""
    from xmrbench.engine.evaluate import encode

    dev = device or torch.device("cpu")

    def embed(resolved: ResolvedRecipe, cell: Cell, seed: int, split: str, images: int):
        if cell.config is None or not store.model_path(resolved.id, cell.id, cell.hash, seed).is_file():  # type: ignore[arg-type]
            return None
        model, prepared = load_member(store, resolved, cell, seed, cache, dev)
        part = prepared.split(split, max_images=images)
        enc = encode(model, part, device=dev, batch_size=256)
        if not isinstance(enc.img_emb, torch.Tensor) or not isinstance(enc.txt_emb, torch.Tensor):
            return None
        return enc.img_emb.float().cpu().numpy(), enc.txt_emb.float().cpu().numpy(), part.captions_per_image

    return embed



def stored_scorer(store: ResultStore, cache: Any, device: torch.device | None = None):
    """``score(resolved, cell, seed, split)`` for the report's cross-rank figures: the
    similarity matrix ``(N_img, N_txt)`` (float32, rows = images) of the whole ``split``
    by the stored model of run ``seed`` of ``cell``; an ensemble cell averages its
    members' matrices (same seed), as its evaluation does. None when the run (or any
    member's) has no stored model. ``cache`` is a :class:`~xmrbench.runner.run.DataCache`."""
    from xmrbench.engine.evaluate import encode, similarity_matrix

    dev = device or torch.device("cpu")

    def score(resolved: ResolvedRecipe, cell: Cell, seed: int, split: str):
        runs = list(cell.members) or [cell]
        for run in runs:
            if run.config is None or not store.model_path(resolved.id, run.id, run.hash, seed).is_file():  # type: ignore[arg-type]
                return None
        cfg = cell.config  # an ensemble carries its first member's evaluation settings

        def member(run: Cell) -> np.ndarray:
            model, prepared = load_member(store, resolved, run, seed, cache, dev)
            part = prepared.split(split)
            enc = encode(model, part, device=dev, batch_size=cfg.eval.batch_size)  # type: ignore[union-attr]
            return similarity_matrix(model, enc, block_images=cfg.eval.block_images).numpy()  # type: ignore[union-attr]

        total = member(runs[0])
        for run in runs[1:]:
            total += member(run)
        if len(runs) > 1:
            total /= len(runs)
        return total

    return score
