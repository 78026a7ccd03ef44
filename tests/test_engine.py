"""The training engine: determinism, checkpoint/resume, NaN handling, evaluation protocols."""

from __future__ import annotations

import pytest
import torch

from xmrbench.core.engine.inputs import PreparedData
from xmrbench.core.engine.train import train_and_evaluate
from xmrbench.errors import DataError, TrainingError
from xmrbench.recipe.config import validate_cell_config

from toy import toy_data

RAW = {
    "model": {"name": "two_branch_embedding", "hidden_dim": 32, "embed_dim": 16, "dropout": 0.1},
    "loss": {"name": "bidirectional_ranking", "top_k": 10},
    "train": {"epochs": 3, "batch_size": 40, "optimizer": "adam", "lr": 0.01},
    "eval": {"protocols": ["test", "testall_5fold"]},
}


def run(tmp_path=None, raw=RAW, seed=0, data=None, **kw):
    cfg = validate_cell_config(raw, where="test")
    prepared = PreparedData(data or toy_data(), cfg.data, "global", "tfidf")
    return train_and_evaluate(cfg, seed, prepared, device=torch.device("cpu"), work_dir=tmp_path, **kw)


def test_training_learns_and_is_deterministic():
    a, b = run(), run()
    assert a.metrics == b.metrics and a.curves["train_loss"] == b.curves["train_loss"]
    assert set(a.metrics) == {"test", "testall_5fold", "dev"}
    assert a.metrics["test"]["rsum"] > 3 * 100 * (1 + 5 + 10) / 20 / 5  # well above chance on 20 images
    assert len(a.ranks["test"]["i2t"]) == 20 and len(a.ranks["test"]["t2i"]) == 100
    assert len(a.ranks["testall_5fold"]["t2i"]) == 500
    assert 1 <= a.best_epoch <= 3
    c = run(seed=1)
    assert c.metrics != a.metrics


def test_resume_after_interruption_gives_identical_results(tmp_path):
    straight = run()
    calls = {"n": 0}

    def stop_after_first_epoch():
        calls["n"] += 1
        return True

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, stop_requested=stop_after_first_epoch)
    assert (tmp_path / "checkpoint.pt").is_file() and calls["n"] == 1
    resumed = run(tmp_path)
    assert resumed.resumed_from_epoch == 1
    assert resumed.metrics == straight.metrics
    assert resumed.curves["train_loss"] == straight.curves["train_loss"]


def test_checkpoint_of_another_config_is_ignored(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, stop_requested=lambda: True)
    other = {**RAW, "train": {**RAW["train"], "lr": 0.02}}
    out = run(tmp_path, raw=other)
    assert out.resumed_from_epoch is None


def test_nan_loss_names_epoch_and_batch(monkeypatch):
    from xmrbench.core.losses.bidirectional_ranking import BidirectionalRankingLoss

    monkeypatch.setattr(BidirectionalRankingLoss, "forward", lambda self, *a, **k: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(TrainingError, match="epoch 1, batch 1"):
        run()


def test_nan_features_are_a_data_error():
    data = toy_data()
    data.split("train").global_feats[3, 0] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        run(data=data)


def test_zero_epochs_evaluates_the_initial_model():
    out = run(raw={**RAW, "train": {**RAW["train"], "epochs": 0}})
    assert out.best_epoch == 0 and out.curves["epoch"] == []
    assert "rsum" in out.metrics["test"]


def test_token_models_train_too():
    raw = {
        "model": {"name": "vsepp", "embed_dim": 16, "word_dim": 8},
        "loss": {"name": "hardest_negative"},
        "train": {"epochs": 2, "batch_size": 32, "lr": 0.005},
    }
    cfg = validate_cell_config(raw, where="test")
    prepared = PreparedData(toy_data(), cfg.data, "global", "tokens")
    out = train_and_evaluate(cfg, 0, prepared, device=torch.device("cpu"))
    assert out.metrics["test"]["rsum"] > 0
