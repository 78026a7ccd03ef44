"""The declared training contract: methods with their own optimisation step, several
optimisers on a schedule, progress-dependent coefficients, extra data streams and
extra batch inputs, all through ``train_and_evaluate`` with no change to its loop."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import stagekit
import torch

from xmrbench.data.dataset import RetrievalData
from xmrbench.engine.inputs import PreparedData
from xmrbench.engine.methods import METHODS, GradientMethod, Progress, Stream
from xmrbench.engine.train import train_and_evaluate
from xmrbench.errors import ConfigError
from xmrbench.recipe.config import validate_cell_config

from support import assert_learns
from toy import toy_data, toy_split

stagekit.register()

RAW = {
    "model": {"name": "two_branch_embedding", "hidden_dim": 32, "embed_dim": 16, "dropout": 0.1},
    "loss": {"name": "bidirectional_ranking", "top_k": 10},
    "train": {"epochs": 6, "batch_size": 40, "optimizer": "adam", "lr": 0.01},
    "method": {"name": "test_alternating", "k": 3},
}


def _run(raw=RAW, data=None, tmp_path=None, **kw):
    cfg = validate_cell_config(raw, where="test")
    prepared = PreparedData(data or toy_data(), cfg.data, "global", "tfidf")
    return train_and_evaluate(cfg, 0, prepared, device=torch.device("cpu"), work_dir=tmp_path, **kw)


def _spy(monkeypatch, cls):
    """Keep every method instance the engine builds."""
    built = []
    original = cls.setup

    def setup(self):
        built.append(self)
        return original(self)

    monkeypatch.setattr(cls, "setup", setup)
    return built


def test_progress_counts_global_steps():
    p = Progress(epoch=2, n_epochs=5, batch=3, steps_per_epoch=10)
    assert p.step == 23 and p.total_steps == 50 and p.fraction == pytest.approx(0.46)
    assert Progress(0, 5, 0, 10).fraction == 0.0


def test_two_optimisers_alternate_k_to_1_with_a_progress_coefficient(monkeypatch):
    built = _spy(monkeypatch, stagekit.AlternatingMethod)
    out = _run()
    (method,) = built
    steps = method.steps
    n_batches = math.ceil(300 / 40)  # toy train: 60 images x 5 captions
    assert [s for s, _, _ in steps] == list(range(6 * n_batches))
    # k = 3: embedding, embedding, embedding, discriminator, ... by global step
    assert [w for _, w, _ in steps] == ["embed" if s % 4 < 3 else "disc" for s in range(len(steps))]
    # the coefficient is 2 / (1 + exp(-10 p)) - 1 at p = step / total steps, computed by hand
    total = 6 * n_batches
    for s, _, coef in steps:
        assert coef == pytest.approx(2 / (1 + math.exp(-10 * s / total)) - 1, abs=1e-12)
    assert steps[0][2] == 0.0 and 0.99 < steps[-1][2] < 1.0
    # the two optimisers own disjoint parameters, and both moved
    embed_ids = {id(p) for p in method.embed_params}
    assert not embed_ids & {id(p) for p in method.discriminator.parameters()}
    assert method.disc_opt.state_dict()["param_groups"][0]["lr"] == 0.01
    assert_learns(out.metrics["test"], 20, factor=2.0)


def test_a_method_resumes_bit_for_bit_from_its_own_state(tmp_path):
    straight = _run()
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path=tmp_path, stop_requested=lambda: True)
    resumed = _run(tmp_path=tmp_path)
    assert resumed.resumed_from_epoch == 1
    assert resumed.metrics == straight.metrics and resumed.curves["train_loss"] == straight.curves["train_loss"]


def test_a_method_that_does_not_fit_the_model_is_refused():
    with pytest.raises(ConfigError, match="does not fit model 'cca'"):
        validate_cell_config({"model": {"name": "cca"}, "loss": None, "method": {"name": "gradient"}}, where="t")
    with pytest.raises(ConfigError, match="method.k"):
        validate_cell_config({**RAW, "method": {"name": "test_alternating", "k": 0}}, where="t")


def test_the_default_method_keeps_the_cell_hash():
    """Cells that name no method hash as before methods existed; naming one changes the hash."""
    plain = {k: v for k, v in RAW.items() if k != "method"}
    a = validate_cell_config(plain, where="t")
    b = validate_cell_config({**plain, "method": {"name": "gradient"}}, where="t")
    assert "method" not in a.to_dict() and a.hash() != b.hash()


class _StreamProbe(GradientMethod):
    """The gradient method, recording the extra streams' batches it is handed."""

    batch_extras = ("tag",)

    def streams(self):
        return {"pairs": Stream(split="dev", batch_size=8), "images": Stream(split="dev", kind="images", batch_size=5)}

    def setup(self):
        super().setup()
        self.seen = []

    def step(self, ctx, batch):
        self.seen.append((batch, ctx.progress.step))
        return super().step(ctx, batch)


def _data_with_tags() -> RetrievalData:
    data = toy_data()
    loaders = dict(data.loaders)
    for name in ("train", "dev"):
        split = loaders[name]()
        split.extras["tag"] = np.arange(split.n_images, dtype=np.int64) * 10
        loaders[name] = lambda s=split: s
    return RetrievalData(name="toy", fingerprint="toy1", loaders=loaders)


def test_extra_streams_and_batch_extras_reach_the_method(monkeypatch):
    if "test_streams" not in METHODS:
        METHODS.register("test_streams", _StreamProbe)
    built = _spy(monkeypatch, _StreamProbe)
    raw = {**RAW, "train": {**RAW["train"], "epochs": 2}, "method": {"name": "test_streams"}}
    _run(raw, data=_data_with_tags())
    (method,) = built
    assert len(method.seen) == 2 * 8
    dev = toy_split("dev", 20, 2)
    for batch, _ in method.seen:
        assert torch.equal(batch.extras["tag"], batch.image_ids * 10)  # per-image extras by image id
        pairs, images = batch.streams["pairs"], batch.streams["images"]
        assert len(pairs.caption_ids) == 8 and pairs.text is not None
        assert torch.equal(pairs.image_ids[pairs.labels[1]], torch.from_numpy(dev.caption_image())[pairs.caption_ids])
        assert images.text is None and images.labels is None and len(images.image_ids) == 5
        assert torch.equal(images.images, torch.from_numpy(dev.global_feats[images.image_ids.numpy()]))
    # each epoch draws its own stream order from (seed, epoch, stream number): deterministic, not repeated
    first = [b.streams["pairs"].caption_ids.tolist() for b, _ in method.seen]
    built.clear()
    _run(raw, data=_data_with_tags())
    assert first == [b.streams["pairs"].caption_ids.tolist() for b, _ in built[0].seen]
    assert first[:8] != first[8:]


def test_the_engine_loop_probes_no_attribute():
    """Models and methods are known by their declared interface, never by probing."""
    root = Path(__file__).resolve().parents[1] / "xmrbench" / "engine"
    for name in ("train.py", "methods.py", "training_method.py", "a3vse_method.py"):
        text = (root / name).read_text()
        assert "getattr(" not in text and "hasattr(" not in text, name


def test_a_parameter_added_later_enters_the_hash_only_when_set():
    """``Params.hashed_when_set``: a component parameter added after results were
    recorded leaves every existing hash alone while it holds its default."""
    from pydantic import Field

    from xmrbench.core.losses.registry import LOSSES
    from xmrbench.recipe.config import validate_cell_config as validate

    cls = LOSSES["bidirectional_ranking"]

    class Later(cls.Params):  # type: ignore[name-defined]
        hashed_when_set = ("later",)
        later: int = Field(0, ge=0)

    plain = {k: v for k, v in RAW.items() if k != "method"}
    before = validate(plain, where="t")
    original = cls.Params
    cls.Params = Later
    try:
        same = validate(plain, where="t")
        moved = validate({**plain, "loss": {**plain["loss"], "later": 3}}, where="t")
    finally:
        cls.Params = original
    assert same.hash() == before.hash() and "later" not in same.to_dict()["loss"]
    assert moved.hash() != before.hash() and moved.to_dict()["loss"]["later"] == 3
