"""Kernel goldens (layer 1 of the regression gate): the committed file matches what the code
computes at one and two torch threads; broken code is caught (every loss returning zero,
every model scoring noise, optimistic tie rules, another median or multiple-testing rule);
no golden sits on a discontinuity; the file format and its bad inputs."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from xmrbench.core.losses.registry import LOSSES
from xmrbench.core.metrics import labels as label_metrics
from xmrbench.core.metrics import retrieval
from xmrbench.core.models.registry import MODELS
from xmrbench.errors import StoreError
from xmrbench.gate import goldens as G
from xmrbench.gate.goldens import (
    GOLDENS_FILE,
    Golden,
    GoldenDiff,
    compare_goldens,
    compute_goldens,
    format_diff,
    read_goldens,
    write_goldens,
)
from xmrbench.stats import paired

REFERENCE = Path(__file__).resolve().parents[1] / "results" / "reference" / GOLDENS_FILE
#: One torch thread unless a test sets its own (the goldens hold at any count; one is fastest here).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fresh() -> dict[str, Golden]:
    """The goldens of the code as it is (a baseline for the mutation tests)."""
    return compute_goldens()


def beyond(reference: dict[str, Golden], current: dict[str, Golden]) -> set[str]:
    return {d.name for d in compare_goldens(reference, current) if d.beyond}


@functools.cache
def with_threads(n: int) -> dict[str, Golden]:
    """The goldens computed at ``n`` torch threads (once per test run)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return compute_goldens()
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------
# the committed reference


@pytest.mark.parametrize("threads", [1, 2])
def test_committed_goldens_match_the_code(threads):
    diffs = compare_goldens(read_goldens(REFERENCE), with_threads(threads))
    bad = [format_diff(d) for d in diffs if d.beyond]
    assert not bad, "goldens beyond tolerance (re-record with python -m xmrbench.gate.goldens --write " \
        f"{REFERENCE.relative_to(REFERENCE.parents[2])} if the change is intended):\n" + "\n".join(bad)


def test_thread_counts_agree_within_a_small_part_of_the_tolerance():
    one, two = with_threads(1), with_threads(2)
    worst = max(d.ratio for d in compare_goldens(one, two))
    assert worst < 1e-3


def test_goldens_are_deterministic_and_leave_torch_rng_alone():
    state = torch.random.get_rng_state()
    first, again = compute_goldens(), compute_goldens()
    assert torch.equal(state, torch.random.get_rng_state())
    assert list(again) == list(first)
    for name in first:
        np.testing.assert_array_equal(again[name].values, first[name].values, err_msg=name)


def test_every_component_has_goldens(fresh):
    names = set(fresh)
    for loss in LOSSES:
        assert f"loss/{loss}/value" in names or f"loss/{loss}/sims_value" in names, loss
    assert {"loss/instance/value", "loss/instance/grad_img_logits", "loss/instance/grad_txt_logits"} <= names
    for model in MODELS:
        assert f"model/{model}/sims" in names, model
    assert {"model/vsrn/auxiliary_loss", "model/dpc/auxiliary_loss", "model/cca/correlations"} <= names
    assert {"model/cca3v/eigenvalues", "model/corr_ae/objective", "model/corr_ae/objective/grad_images",
            "model/acmr/label_logits", "model/acmr/modality_logits"} <= names
    for term in ("imi", "imi/multi-label-mean", "imd", "imd/multi-label", "adv", "reg"):
        assert f"loss/acmr/{term}/value" in names, term
    for kernel in ("cosine", "scan/t2i-avg", "scan/t2i-lse", "scan/i2t-avg", "scan/i2t-lse", "bfan/equal", "bfan/prob"):
        assert f"sim/{kernel}" in names and any(n.startswith(f"sim/{kernel}/grad") for n in names), kernel
    for metric in ("retrieval/i2t_ranks", "retrieval/ties", "retrieval/folds", "sentence/ranks",
                   "labels/average_precision", "labels/precision_at_k"):
        assert f"metric/{metric}" in names
    assert {"stats/seed_ttest/p", "stats/signflip_test/p", "stats/holm", "stats/judge/verdicts"} <= names


def test_every_golden_can_catch_a_zeroed_result(fresh):
    """Entries compared with a tolerance hold some clearly non-zero value, so a result
    replaced by zeros cannot pass; all are finite."""
    for name, g in fresh.items():
        assert np.isfinite(g.values).all(), name
        if g.rtol > 0:
            assert np.abs(g.values).max() > 1e3 * g.atol, name


def test_no_golden_sits_on_a_discontinuity(fresh):
    """Inputs moved by 1e-12 (relative) move every entry by a small part of its tolerance:
    no hinge, max, top-k or focal indicator is so close to its switch that rounding
    differences between machines could flip it."""
    jittered = G._compute(jitter=1e-12)
    worst = max(compare_goldens(fresh, jittered), key=lambda d: d.ratio)
    assert worst.ratio < 0.1, format_diff(worst)


# ---------------------------------------------------------------------------------
# broken code is caught


def zero_loss(self, img_emb, txt_emb, *, sims=None, labels=None, **kwargs):
    """A loss that returns 0 but keeps the graph to its inputs."""
    total = img_emb.sum() + txt_emb.sum()
    if sims is not None:
        total = total + sims.sum()
    return total * 0.0


@pytest.mark.parametrize("name", list(LOSSES))
def test_a_loss_returning_zero_is_caught(name, fresh, monkeypatch):
    monkeypatch.setattr(LOSSES[name], "forward", zero_loss)
    caught = beyond(fresh, compute_goldens())
    values = {n for n in fresh if n.startswith(f"loss/{name}/") and n.endswith("value")}
    assert values and values <= caught
    assert all(n.startswith(f"loss/{name}/") for n in caught)


def noise_similarity(self, img_emb, txt_emb):
    generator = torch.Generator().manual_seed(0)
    return torch.rand(len(img_emb), len(txt_emb), dtype=torch.float64, generator=generator)


@pytest.mark.parametrize("name", list(MODELS))
def test_a_model_scoring_noise_is_caught(name, fresh, monkeypatch):
    monkeypatch.setattr(MODELS[name], "similarity", noise_similarity)
    caught = beyond(fresh, compute_goldens())
    sims = {n for n in fresh if n.startswith(f"model/{name}/") and n.endswith("/sims")}
    assert sims and sims <= caught
    assert all(n.startswith(f"model/{name}/") for n in caught)


def optimistic_i2t_ranks(sims, captions_per_image, block_size):
    """Ties counted for the positive: only captions scoring strictly higher come first."""
    n_img = sims.shape[0]
    pos = sims.reshape(n_img, n_img, captions_per_image)[torch.arange(n_img), torch.arange(n_img)]
    return (sims > pos.amax(1, keepdim=True)).sum(1)


def optimistic_t2i_ranks(sims, captions_per_image, block_size):
    cols = torch.arange(sims.shape[1])
    return (sims > sims[cols // captions_per_image, cols]).sum(0)


def test_an_optimistic_tie_rule_is_caught(fresh, monkeypatch):
    monkeypatch.setattr(retrieval, "_i2t_ranks", optimistic_i2t_ranks)
    monkeypatch.setattr(retrieval, "_t2i_ranks", optimistic_t2i_ranks)
    caught = beyond(fresh, compute_goldens())
    assert {"metric/retrieval/ties", "metric/retrieval/i2t_ranks", "metric/retrieval/t2i_ranks",
            "metric/retrieval/summary", "metric/retrieval/folds"} <= caught
    assert all(n.startswith("metric/retrieval/") for n in caught)


def test_an_optimistic_label_tie_rule_is_caught(fresh, monkeypatch):
    def relevant_first(sims_block, rel_block, depth, acc):
        key = sims_block + 1e-6 * rel_block.to(sims_block.dtype)  # grid steps are 0.25 apart
        order = torch.sort(key, dim=1, descending=True, stable=True).indices[:, :depth]
        return rel_block.gather(1, order).to(acc)

    monkeypatch.setattr(label_metrics, "_sorted_relevance", relevant_first)
    caught = beyond(fresh, compute_goldens())
    assert {"metric/labels/average_precision", "metric/labels/map"} <= caught
    assert all(n.startswith("metric/labels/") for n in caught)


def test_a_lower_median_is_caught(fresh, monkeypatch):
    monkeypatch.setattr(retrieval, "_median_rank", lambda ranks: float(torch.median(ranks)) + 1.0)
    assert "metric/retrieval/summarize" in beyond(fresh, compute_goldens())


def test_bonferroni_instead_of_holm_is_caught(fresh, monkeypatch):
    monkeypatch.setattr(paired, "holm", lambda p: [min(1.0, len(p) * x) for x in p])
    assert "stats/holm" in beyond(fresh, compute_goldens())


# ---------------------------------------------------------------------------------
# comparison rules


def golden(values, rtol=1e-9, atol=0.0, name="x") -> Golden:
    return Golden(name, np.asarray(values, dtype=np.float64), rtol, atol)


def test_compare_applies_atol_plus_rtol_of_the_reference():
    ref = {"x": golden([1.0, 100.0], rtol=1e-3, atol=1e-2)}
    (ok,) = compare_goldens(ref, {"x": golden([1.0 + 0.011, 100.0 + 0.1], rtol=0.0)})
    assert not ok.beyond and ok.problem is None
    assert ok.max_abs == pytest.approx(0.1) and ok.max_rel == pytest.approx(0.011)
    (bad,) = compare_goldens(ref, {"x": golden([1.0, 100.2])})
    assert bad.beyond and bad.ratio > 1
    (exact,) = compare_goldens({"x": golden([3.0], rtol=0.0)}, {"x": golden([3.0 + 1e-15])})
    assert exact.beyond and math.isinf(exact.ratio)


def test_compare_reports_new_removed_reshaped_and_non_finite():
    ref = {"kept": golden([1.0]), "gone": golden([1.0]), "shape": golden([1.0, 2.0])}
    cur = {"kept": golden([math.nan]), "new": golden([1.0]), "shape": golden([1.0])}
    diffs = {d.name: d for d in compare_goldens(ref, cur)}
    assert list(diffs) == ["gone", "kept", "new", "shape"]
    assert diffs["new"].problem == "new golden; record it with xmrbench check --update"
    assert diffs["gone"].problem == "golden no longer computed"
    assert "shape changed" in diffs["shape"].problem
    assert diffs["kept"].problem is None and diffs["kept"].beyond
    assert all(d.beyond for d in diffs.values())
    assert not GoldenDiff("y", 0.0, 0.0, 1e-9, 0.0, None).beyond


# ---------------------------------------------------------------------------------
# the file


def test_write_and_read_round_trip_bit_for_bit(tmp_path, fresh):
    path = tmp_path / "sub" / GOLDENS_FILE
    write_goldens(path, fresh)
    assert [p.name for p in path.parent.iterdir()] == [GOLDENS_FILE]  # atomic: no temporary left
    doc = json.loads(path.read_text())
    assert doc["kind"] == "xmrbench.goldens" and isinstance(doc["version"], int)
    entry = doc["goldens"]["loss/hardest_negative/value"]
    assert set(entry) == {"description", "rtol", "atol", "values"} and entry["description"]
    back = read_goldens(path)
    assert list(back) == list(fresh)
    for name, g in fresh.items():
        assert back[name].rtol == g.rtol and back[name].atol == g.atol and back[name].description == g.description
        np.testing.assert_array_equal(back[name].values, g.values)
    assert not any(d.max_abs for d in compare_goldens(fresh, back))


def test_write_refuses_non_finite_values(tmp_path):
    with pytest.raises(ValueError, match="NaN or inf"):
        write_goldens(tmp_path / GOLDENS_FILE, {"x": golden([math.inf])})


def good_doc() -> dict:
    return {"kind": "xmrbench.goldens", "version": G.GOLDENS_VERSION,
            "goldens": {"a": {"description": "d", "rtol": 1e-9, "atol": 0.0, "values": [1.0, 2.0]}}}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "not found"),
        ("{not json", "corrupted goldens file (JSONDecodeError)"),
        (b"\xff\xfe\x00", "corrupted goldens file"),
        (json.dumps({"kind": "xmrbench.reference", "version": 1, "runs": []}), "not a goldens file"),
        (json.dumps([1, 2]), "not a goldens file"),
        (json.dumps(dict(good_doc(), version=99)), "goldens version 99"),
        (json.dumps(dict(good_doc(), goldens=[])), "no 'goldens' mapping"),
        (json.dumps(dict(good_doc(), goldens={"a": {"rtol": 0, "atol": 0, "values": ["1"]}})), "goldens.a"),
        (json.dumps(dict(good_doc(), goldens={"a": {"rtol": -1, "atol": 0, "values": [1]}})), "goldens.a"),
        (json.dumps(dict(good_doc(), goldens={"a": {"atol": 0, "values": [1]}})), "lacks finite values"),
        ('{"kind": "xmrbench.goldens", "version": 1, "goldens": {"a": {"rtol": 0, "atol": 0, "values": [NaN]}}}',
         "goldens.a"),
    ],
)
def test_bad_goldens_file_names_the_file(tmp_path, content, message):
    path = tmp_path / GOLDENS_FILE
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(StoreError) as info:
        read_goldens(path)
    assert info.value.where == str(path)
    assert message in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)


def test_good_doc_reads(tmp_path):
    path = tmp_path / GOLDENS_FILE
    path.write_text(json.dumps(good_doc()))
    (only,) = read_goldens(path).values()
    assert only.name == "a" and only.values.tolist() == [1.0, 2.0] and only.description == "d"


def test_command_line_writes_checks_and_reports_bad_files(tmp_path, capsys):
    path = tmp_path / GOLDENS_FILE
    assert G.main(["--write", str(path)]) == 0
    assert G.main(["--check", str(path)]) == 0
    assert "0 beyond tolerance" in capsys.readouterr().out
    doc = json.loads(path.read_text())
    doc["goldens"]["loss/triplet_sum/value"]["values"] = [0.0]
    path.write_text(json.dumps(doc))
    assert G.main(["--check", str(path)]) == 1
    assert "loss/triplet_sum/value: BEYOND" in capsys.readouterr().out
    assert G.main(["--check", str(tmp_path / "missing.json")]) == 2
    assert "missing.json: goldens file not found" in capsys.readouterr().err
