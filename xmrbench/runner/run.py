"""One run: a (cell, seed) trained and evaluated through the engine, its result written.

``run_one`` builds the cell's dataset (shared between cells through a
:class:`DataCache`), trains and evaluates through the engine (resuming from the
run's checkpoint), and writes the result document and the selected model's weights
atomically. An ensemble cell averages the similarity matrices of its members'
stored models, or with ``region_phrase_weight`` weighs an image-sentence model's
distances with a region-phrase model's (the two-branch paper's Eq. 8). Which runs to compute, in which order and where, is the driver's
business (``runner/driver.py``).
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from xmrbench.config import DataConfig
from xmrbench.core.convergence import Convergence, of_members
from xmrbench.core.metrics.protocols import PROTOCOLS
from xmrbench.core.models.two_branch import TwoBranchEmbedding, TwoBranchSimilarity
from xmrbench.data.dataset import RetrievalData
from xmrbench.data.registry import DATASETS
from xmrbench.engine.evaluate import encode, fold_similarities, metrics_from_similarities
from xmrbench.engine.inputs import PreparedData
from xmrbench.engine.region_phrase import fuse, region_phrase_distances
from xmrbench.engine.train import Events, RunOutput, evaluate_trained, train_and_evaluate
from xmrbench.errors import ConfigError, StoreError
from xmrbench.provenance.env import environment
from xmrbench.provenance.fingerprint import run_fingerprint
from xmrbench.recipe.resolve import Cell, ResolvedRecipe
from xmrbench.runner.adopt import find_training, keep_checkpoint, open_budget_hash, record_training, restore_checkpoint
from xmrbench.runner.kept_sims import SimsKeeper, kept_dir, load_kept, release
from xmrbench.runner.stages import artifact, initial_weights
from xmrbench.runner.stored import inputs_of, load_member, load_state, run_config, write_plain
from xmrbench.store.schema import SCHEMA_VERSION, CellRef, DatasetRef, RecipeRef, ResultDoc
from xmrbench.store.stamps import file_stamps
from xmrbench.store.store import ResultStore


class DataCache:
    """Datasets and their model-ready preparations, shared by the cells of one process."""

    def __init__(self) -> None:
        self._data: dict[str, RetrievalData] = {}
        self._prepared: dict[tuple[str, str, str], PreparedData] = {}

    def data(self, cfg: DataConfig) -> RetrievalData:
        key = json.dumps(cfg.model_dump(mode="json"), sort_keys=True)
        if key not in self._data:
            self._data[key] = DATASETS[cfg.name](cfg)
        return self._data[key]

    def prepared(self, cfg: DataConfig, image_input: str, text_input: str) -> PreparedData:
        key = (json.dumps(cfg.model_dump(mode="json"), sort_keys=True), image_input, text_input)
        if key not in self._prepared:
            self._prepared[key] = PreparedData(self.data(cfg), cfg, image_input, text_input)
        return self._prepared[key]


def run_one(
    resolved: ResolvedRecipe,
    cell: Cell,
    seed: int,
    *,
    store: ResultStore,
    cache: DataCache,
    device: torch.device,
    events: Events | None = None,
    stop_requested: Callable[[], bool] | None = None,
    keep_sims: bool = False,
    reuse_training: bool = True,
) -> tuple[ResultDoc, Path]:
    """Train and evaluate one (cell, seed) and write its result document.

    ``keep_sims``: keep the final image-text similarity matrices for an ensemble of this
    cell that runs next (``xmrbench/runner/kept_sims.py``). ``reuse_training``: when the
    store holds a run of another cell that trained this cell's model (the same training
    hash and seed, ``runner/adopt.py``), evaluate that model instead of training again,
    and start from the kept last checkpoint of a smaller budget's run that ended at its cap.
    """
    if cell.members:
        return _run_ensemble(resolved, cell, seed, store=store, cache=cache, device=device)
    cfg = cell.config
    assert cfg is not None and cell.hash is not None
    image_input, text_input = inputs_of(cfg)
    prepared = cache.prepared(cfg.data, image_input, text_input)
    config = run_config(cell)
    files = file_stamps(config)  # before anything is read: a file edited during the run makes it stale
    label = f"{resolved.id}/{cell.id}/seed{seed}"
    work = store.work_dir(resolved.id, cell.id, cell.hash, seed)
    source = find_training(store, config, seed, cache.data(cfg.data).fingerprint) if reuse_training else None
    if source is not None:
        src_doc, src_model = source
        state = load_state(src_model)
        work.mkdir(parents=True, exist_ok=True)
        keeper = SimsKeeper(work, kept_dir(store, resolved.id, cell, seed)) if keep_sims else None
        out = evaluate_trained(cfg, seed, prepared, state, src_doc.curves, src_doc.best_epoch, device=device,
                               label=label, on_sims=keeper)
        doc = _result_doc(resolved, cell, seed, out, config, cache.data(cfg.data), prepared, device)
        doc = doc.model_copy(update={
            "trained_by": f"{src_doc.recipe.id}/{store.run_name(src_doc.cell.id, src_doc.cell.hash, seed)}",
            "files": files})
        return _store_run(store, resolved, cell, seed, doc, out, keeper, trained=False)
    init_state, artifacts = None, {}
    if cell.needs is not None:  # a later stage: what earlier stages produced, same seed

        if cell.needs.init is not None:
            init_state = initial_weights(store, resolved, cell.needs.init, seed, cache, device)
        for ref in cell.needs.artifacts:
            artifacts[ref.name] = artifact(store, resolved, ref, seed, cache, device,
                                                  warn=events.warn if events is not None else None,
                                                  stop_requested=stop_requested)
    work.mkdir(parents=True, exist_ok=True)
    if reuse_training:  # a smaller budget's last epochs, when that run ended at its cap
        restore_checkpoint(store, config, seed, work)
    keeper = SimsKeeper(work, kept_dir(store, resolved.id, cell, seed)) if keep_sims else None
    out = train_and_evaluate(
        cfg,
        seed,
        prepared,
        device=device,
        work_dir=work,
        events=events,
        label=label,
        stop_requested=stop_requested,
        init_state=init_state,
        artifacts=artifacts,
        on_sims=keeper,
        resume_key=open_budget_hash(config),
    )
    doc = _result_doc(resolved, cell, seed, out, config, cache.data(cfg.data), prepared, device)
    doc = doc.model_copy(update={"files": files})
    if out.convergence is not None and out.convergence.epochs is not None:
        keep_checkpoint(store, config, seed, work, out.convergence.stopped_early, out.convergence.epochs)
    return _store_run(store, resolved, cell, seed, doc, out, keeper, trained=True)


def _store_run(store: ResultStore, resolved: ResolvedRecipe, cell: Cell, seed: int, doc: ResultDoc, out: RunOutput,
               keeper: SimsKeeper | None, *, trained: bool) -> tuple[ResultDoc, Path]:
    """Write the model, then the result (the result marks the run done), and for a run that
    trained its model the reference other cells with its training hash find it by."""
    model_path = store.model_path(resolved.id, cell.id, cell.hash, seed)  # type: ignore[arg-type]
    _save_model({"config": doc.config, "seed": seed, "state_dict": out.state_dict}, model_path)
    if keeper is not None:
        keeper.seal(model_path)
    path = store.write(doc)
    if trained:
        record_training(store, doc)
    store.finish_run(resolved.id, cell.id, cell.hash, seed)  # type: ignore[arg-type]
    return doc, path


def _save_model(payload: dict[str, Any], path: Path) -> None:
    """Write the selected model's weights atomically; ``load_member`` reads them with ``weights_only=True``."""
    write_plain(payload, path, what="the model weights")


def _result_doc(resolved, cell, seed, out: RunOutput, config: dict, data, prepared, device) -> ResultDoc:
    image_input, text_input = prepared.image_input, prepared.text_input
    protocols = {}
    declared = cell.config.eval.protocols if cell.config else ()
    for name in out.metrics:
        if name == "dev" and name not in declared:
            continue  # the selection metrics on the first eval.dev_images images, not a protocol
        split = prepared.split(PROTOCOLS[name].split)
        protocols[name] = run_fingerprint(
            name,
            dataset_name=data.name,
            dataset_fingerprint=data.fingerprint,
            dataset_info=data.info,
            split_images=split.n_images,
            captions_per_image=split.captions_per_image,
            config=cell.config.to_dict() if cell.config else config,
            text_input=text_input,
            image_input=image_input,
            vocabulary=prepared.vocabulary,
        )
    return ResultDoc(
        schema_version=SCHEMA_VERSION,
        recipe=RecipeRef(
            id=resolved.id,
            path=str(resolved.path),
            hash=resolved.hash,
            paper=resolved.recipe.paper,
            table=resolved.recipe.table,
            profile=resolved.profile,
        ),
        cell=CellRef(id=cell.id, label=cell.label, row=cell.row.id, point=cell.point, hash=cell.hash),
        seed=seed,
        config=config,
        dataset=DatasetRef(name=data.name, fingerprint=data.fingerprint, info=data.info),
        protocols=protocols,
        metrics=out.metrics,
        ranks=out.ranks,
        curves=out.curves,
        best_epoch=out.best_epoch,
        n_params=out.n_params,
        timing=out.timing,
        env=environment(device),
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        resumed_from_epoch=out.resumed_from_epoch,
        convergence=out.convergence.to_dict() if out.convergence is not None else None,
    )


def _run_ensemble(resolved, cell, seed, *, store, cache, device) -> tuple[ResultDoc, Path]:
    """Average the members' similarity matrices (same seed) and evaluate the average;
    a member's matrices kept by its run are used instead of scoring it again."""
    t0 = time.perf_counter()
    members = [load_member(store, resolved, m, seed, cache, device) for m in cell.members]
    cfg = cell.config
    eval_kw = dict(device=device, batch_size=cfg.eval.batch_size)

    weight = cell.row.region_phrase_weight

    def averaged(split_name: str, folds: int, max_images: int | None = None, protocol: str | None = None):
        if weight is not None:
            return fused(split_name, folds, max_images)
        total = None
        cpi = None
        for member, (model, prepared) in zip(cell.members, members):
            split = prepared.split(split_name, max_images=max_images)
            cpi = split.captions_per_image
            sims = None if protocol is None else load_kept(
                kept_dir(store, resolved.id, member, seed), protocol,
                model_path=store.model_path(resolved.id, member.id, member.hash, seed),
                images=split.n_images, captions=split.n_captions, folds=folds)
            if sims is None:
                enc = encode(model, split, **eval_kw)
                sims = fold_similarities(model, split, enc, folds=folds, block_images=cfg.eval.block_images)
            total = sims if total is None else [a + b for a, b in zip(total, sims)]
        return metrics_from_similarities([s / len(members) for s in total], captions_per_image=cpi)

    def fused(split_name: str, folds: int, max_images: int | None):
        """Eq. 8 of the two-branch paper: the first member's distance weighted with the
        second's region-phrase distance (``xmrbench/engine/region_phrase.py``)."""
        (sentence_model, sentence_data), (phrase_model, phrase_data) = members
        if not all(isinstance(m, TwoBranchEmbedding) and not isinstance(m, TwoBranchSimilarity)
                   for m in (sentence_model, phrase_model)):
            raise ConfigError("region_phrase_weight fuses two embedding networks (model two_branch_embedding): "
                              "their distances come from cosine similarities", where=f"{resolved.id}/{cell.id}")
        split = sentence_data.split(split_name, max_images=max_images)
        enc = encode(sentence_model, split, **eval_kw)
        sims = fold_similarities(sentence_model, split, enc, folds=folds, block_images=cfg.eval.block_images)
        d_rp = region_phrase_distances(phrase_model, phrase_data.split(split_name, max_images=max_images),
                                       device=device, batch_size=cfg.eval.batch_size)
        size, cpi = split.n_images // folds, split.captions_per_image
        parts = [fuse(s, d_rp[f * size:(f + 1) * size, f * size * cpi:(f + 1) * size * cpi], weight)
                 for f, s in enumerate(sims)]
        return metrics_from_similarities(parts, captions_per_image=cpi)

    metrics, ranks = {}, {}
    for name in cfg.eval.protocols:
        proto = PROTOCOLS[name]
        if proto.task != "image_text":
            raise ConfigError(f"protocol {name!r} measures task {proto.task!r}; an ensemble averages image-text "
                              "similarity matrices only", where=f"{resolved.id}/{cell.id}")
        metrics[name], ranks[name] = averaged(proto.split, proto.folds, protocol=name)
    if "dev" not in cfg.eval.protocols:  # a "dev" protocol (the whole split) keeps its own numbers
        metrics["dev"], _ = averaged("dev", 1, cfg.eval.dev_images)
    out = RunOutput(
        metrics=metrics,
        ranks=ranks if cfg.eval.store_ranks else {},
        curves={},
        best_epoch=None,
        timing={"train_s": 0.0, "eval_s": time.perf_counter() - t0, "wall_s": time.perf_counter() - t0},
        n_params=sum(sum(p.numel() for p in m.parameters()) for m, _ in members),
        convergence=of_members({m.id: _member_convergence(store, resolved, m, seed) for m in cell.members}),
    )
    config = {"ensemble": {m.id: m.config.to_dict() for m in cell.members}}
    first_prepared = members[0][1]
    doc = _result_doc(resolved, cell, seed, out, config, cache.data(cfg.data), first_prepared, device)
    path = store.write(doc)
    release(store, resolved, cell.members, seed)
    return doc, path


def _member_convergence(store, resolved, member, seed) -> Convergence | None:
    """A member run's convergence record, from its result document (None: not recorded)."""
    try:
        doc = store.read(store.result_path(resolved.id, member.id, member.hash, seed))
    except StoreError:
        return None
    return doc.convergence_record()
