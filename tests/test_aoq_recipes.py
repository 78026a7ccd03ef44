"""AOQ's tables as recipes: every row runs, the second rounds read the first-round VSRN's
lists, and ``xmrbench sweep aoq --h ...`` varies Table 3's row as typed."""

from __future__ import annotations

import pytest

from xmrbench.errors import UsageError
from xmrbench.recipe.resolve import resolve
from xmrbench.runner.sweep import build_sweep, printed_rows

from support import cli

AOQ_TABLES = ["aoq-table1", "aoq-table2", "aoq-table3", "aoq-table4", "aoq-table5"]


@pytest.mark.parametrize("recipe", AOQ_TABLES)
def test_every_row_runs_and_round_two_reads_the_first_round_vsrn(recipe):
    resolved = resolve(recipe, profile="smoke")
    rows = resolved.recipe.rows
    assert all(r.run for r in rows), [r.id for r in rows if not r.run]
    for cell in resolved.cells:
        if cell.members:
            continue
        method = cell.config.method
        assert method is not None and method.name == "aoq", cell.id  # one code path for the online term
        if method.params.loss == "online":
            assert cell.needs is None or cell.needs.artifacts == (), cell.id
        else:
            (art,) = cell.needs.artifacts
            assert art.miner == "offline_candidates" and art.source.row.id == "vsrn", cell.id
            assert art.source.config.model.name == "vsrn" and art.source.config.method.params.loss == "online"
            # the teacher mined the same training data the student trains on
            assert art.source.config.data == cell.config.data, cell.id


def test_table1_trains_both_members_of_each_ensemble_with_each_loss():
    resolved = resolve("aoq-table1", profile="smoke")
    for loss in ("offtri", "offquin", "adapoffquin"):
        for model in ("scan", "bfan"):
            ens = resolved.cell(f"{model}-{loss}")
            assert len(ens.members) == 2
            assert {m.config.method.params.loss for m in ens.members} == {loss}
        assert resolved.cell(f"vsrn-{loss}").config.method.params.loss == loss


def test_table1_scores_5k_only_where_the_paper_prints_it_beyond_smoke():
    """The cross-attention OffTri/OffQuin members skip the 5K protocol (no printed number,
    claim or figure reads it) at quick and full; the smoke profile keeps both, so the gate
    still runs the 5K path, and the narrowing changes what is reported, not what is trained."""
    for profile in ("quick", "full"):
        resolved = resolve("aoq-table1", profile=profile, require_data=False)
        for cell in resolved.runnable_cells():
            printed_5k = "testall" in cell.paper
            skipped = cell.row.id.startswith(("scan", "bfan")) and cell.row.id.endswith(("-offtri", "-offquin"))
            assert cell.config.eval.protocols == (("testall_5fold",) if skipped else ("testall_5fold", "testall")), cell.id
            assert not (skipped and printed_5k), cell.id
        assert "testall" in resolved.cell("bfan-adapoffquin").paper
    smoke = resolve("aoq-table1", profile="smoke")
    assert {c.config.eval.protocols for c in smoke.runnable_cells()} == {("testall_5fold", "testall")}
    quick = resolve("aoq-table1", profile="quick", require_data=False)
    member = quick.cell("scan-t2i-offtri")
    assert member.training_hash == resolve("aoq-table1", profile="quick", require_data=False,
                                           overrides={"eval.protocols": ["testall_5fold", "testall"]}
                                           ).cell("scan-t2i-offtri").training_hash


def test_table3_ablations_change_exactly_their_parameter():
    resolved = resolve("aoq-table3", profile="smoke")

    def params(cell_id):
        return resolved.cell(cell_id).config.method.params.model_dump()

    final = params("vsrn-adapoffquin")
    offquin = params("vsrn-offquin")
    assert {k for k in final if final[k] != offquin[k]} == {"loss"}
    for row, base, diff in [
        ("vsrn-onlyoffline", offquin, {"online": False}),
        ("vsrn-onlinequin", offquin, {"derived": "online"}),
        ("vsrn-no-offline-adap", final, {"reference": "positive"}),
        ("vsrn-h1000", final, {"h": 1000}),
    ]:
        got = params(row)
        assert {k: got[k] for k in got if got[k] != base[k]} == diff, row
    finetune = resolved.cell("vsrn-finetune")
    assert finetune.needs.init is resolved.cell("vsrn") and params("vsrn-finetune") == final
    for member in resolved.cell("bfan-finetune").members:
        assert member.needs.init.row.id == member.row.id.replace("-finetune", "")


def test_sweep_aoq_h_lands_in_table3s_row_beside_its_printed_numbers():
    resolved = build_sweep("aoq", ["--h", "200,500,1000"], profile="smoke", seeds=None, overrides={}, rows=None)
    swept = [c for c in resolved.cells if c.row.id.startswith("vsrn-adapoffquin.")]
    assert [c.config.method.params.h for c in swept] == [200, 500, 1000]
    assert [c.config.method.params.images_h for c in swept] == [40, 100, 200]
    assert [c.id for c in resolved.cells if c not in swept] == ["vsrn"]  # round one, once
    printed = printed_rows(resolved)
    assert [printed[c.config.hash()][0] for c in swept] == ["vsrn-h200", "vsrn-h500", "vsrn-h1000"]
    assert printed[swept[0].config.hash()][1] == pytest.approx(77.1 + 95.3 + 98.4 + 63.3 + 90.4 + 95.6)


def test_sweep_aoq_alpha_and_beta_vary_one_at_a_time_like_table5():
    resolved = build_sweep("aoq", ["--alpha", "0.2,0.5", "--beta", "1.0,2.0"], profile="smoke", seeds=None,
                           overrides={}, rows=None)
    swept = [(c.config.method.params.alpha, c.config.method.params.beta) for c in resolved.cells if c.row.id != "vsrn"]
    assert swept == [(0.2, 1.5), (0.5, 1.5), (0.3, 1.0), (0.3, 2.0)]
    printed = printed_rows(resolved)
    assert sorted(v[0] for v in printed.values()) == sorted(
        ["vsrn", "beta1.5-alpha0.2", "beta1.5-alpha0.3", "beta1.5-alpha0.5", "beta1.0-alpha0.3", "beta2.0-alpha0.3"])
    grid = build_sweep("aoq", ["--alpha", "0.2,0.5", "--beta", "1.0,2.0"], profile="smoke", seeds=None,
                       overrides={}, rows=None, shape="grid")
    assert len([c for c in grid.cells if c.row.id != "vsrn"]) == 4
    assert {(c.config.method.params.alpha, c.config.method.params.beta) for c in grid.cells if c.row.id != "vsrn"} == {
        (0.2, 1.0), (0.2, 2.0), (0.5, 1.0), (0.5, 2.0)}


@pytest.mark.parametrize("args, message", [
    (["--gamma", "0.1"], "no sweep parameter --gamma; aoq sweeps --h, --alpha, --beta"),
    (["--h", "200", "--alpha", "0.2"], "vary different tables"),
])
def test_bad_aoq_sweeps_are_one_line_errors(args, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        build_sweep("aoq", args, profile="smoke", seeds=None, overrides={}, rows=None)


@pytest.mark.slow
def test_sweep_aoq_h_runs_as_typed(tmp_path, capsys):
    code, out, err = cli(["sweep", "aoq", "--h", "200,500,1000", "--profile", "smoke", "--seeds", "0",
                          "--results", str(tmp_path), "--quiet", "--threads", "1"], capsys)
    assert code == 0, err
    assert "4 run(s) computed" in out
    for h in (200, 500, 1000):  # each swept cell beside the printed row of its h
        (line,) = [ln for ln in out.splitlines() if f"vsrn-h{h} " in ln]
        assert "│ 1 " in line
    stored = sorted(p.name.split("--")[0] for p in (tmp_path / "aoq-table3.sweep-h").glob("*.json"))
    assert stored == ["vsrn", "vsrn-adapoffquin.h-1000", "vsrn-adapoffquin.h-200", "vsrn-adapoffquin.h-500"]


OWN_LISTS = """\
id: aoq-own-lists
extends: {base}
table: T
title: AdapOffQuin from the user's own candidate files
columns: [i2t_r1, i2t_r5, i2t_r10, t2i_r1, t2i_r5, t2i_r10, rsum]
protocols:
  testall_5fold: {{dataset: mscoco, split: testall, images: 5000, captions_per_image: 5, folds: 5}}
rows:
  - id: vsrn-own-lists
    label: VSRN + AdapOffQuin, lists read from files
    use: [aoq-adapoffquin, round2-vsrn]
    set: {{model.name: vsrn, model.image_input: regions, method.beta: 1.5, method.alpha: 0.3,
          method.candidate_files: [{i2t}, {t2i}]}}
"""


@pytest.mark.slow
def test_exported_lists_read_back_train_the_same_model(tmp_path, capsys):
    """Export a row's mined lists in the release layout, train a row that reads the files
    instead of the artifact: the same model, bit for bit; a file of the wrong shape is a
    one-line error naming it."""
    import json
    from pathlib import Path

    import numpy as np

    store = tmp_path / "results"
    args = ["--profile", "smoke", "--seeds", "0", "--results", str(store), "--quiet", "--threads", "1"]
    code, _, err = cli(["reproduce", "aoq-table5", "--rows", "beta1.5-alpha0.3", "--no-report", *args], capsys)
    assert code == 0, err
    code, out, err = cli(["candidates", "aoq-table5", "--row", "beta1.5-alpha0.3", "--out", str(tmp_path / "lists"),
                          "--name", "tiny", "--profile", "smoke", "--results", str(store)], capsys)
    assert code == 0, err
    i2t, t2i = tmp_path / "lists" / "i2t_tiny.npy", tmp_path / "lists" / "t2i_tiny.npy"
    assert np.load(i2t).dtype == np.int32 and np.load(i2t).shape == (200, 995) and np.load(t2i).shape == (1000, 199)
    base = Path(__file__).resolve().parents[1] / "recipes" / "_base" / "aoq.yaml"
    recipe = tmp_path / "own.yaml"
    recipe.write_text(OWN_LISTS.format(base=base, i2t=i2t, t2i=t2i))
    code, _, err = cli(["reproduce", str(recipe), "--no-report", *args], capsys)
    assert code == 0, err
    (mined,) = (store / "aoq-table5").glob("beta1.5-alpha0.3--*seed0.json")
    (own,) = (store / "aoq-own-lists").glob("vsrn-own-lists--*seed0.json")
    assert json.loads(own.read_text())["metrics"] == json.loads(mined.read_text())["metrics"]
    np.save(t2i, np.load(t2i)[:500])  # a caption list of the wrong length
    for name in ("bad-lists", "own-lists"):  # a new cell, and the stored one: its file changed since
        recipe.write_text(OWN_LISTS.format(base=base, i2t=i2t, t2i=t2i).replace("own-lists", name))
        code, out, err = cli(["reproduce", str(recipe), "--no-report", *args], capsys)
        assert code != 0
        # the error line itself: a stored run's "changed since the run" warning names the
        # same file, and its cell hash (a hash of the temporary paths) may hold "500" too
        line = [ln for ln in (out + err).splitlines() if "t2i_tiny.npy" in ln and "found 500" in ln]
        assert line and "expected 1000" in line[0] and "Traceback" not in out + err
    code, out, err = cli(["report", str(recipe), "--profile", "smoke", "--results", str(store)], capsys)
    assert "t2i_tiny.npy changed since the run (ignored" in " ".join((out + err).split())


def test_the_gate_runs_the_first_round_its_judged_cells_read():
    """aoq-table1's round-one VSRN is judged on its five folds only (its 500-image testall
    split is declared); were it not gated at all, every judged second round still reads its
    lists, so the CI set would still run it."""
    from dataclasses import replace

    from xmrbench.gate.check import cells_to_run, gate_cells

    resolved = resolve("aoq-table1", profile="smoke")
    judged = {c.id: c for c in gate_cells(resolved, all_cells=False)}
    assert "vsrn" in judged and "vsrn-adapoffquin" in judged
    assert set(resolved.not_gated_protocols(judged["vsrn"])) == {"testall"}
    assert set(resolved.not_gated_protocols(judged["vsrn-adapoffquin"])) == {"testall"}
    whole = replace(resolved, recipe=resolved.recipe.model_copy(update={"not_gated": {"vsrn": "declared"}}))
    judged_cells = gate_cells(whole, all_cells=False)
    assert "vsrn" not in {c.id for c in judged_cells} and "vsrn-adapoffquin" in {c.id for c in judged_cells}
    run = {c.id for c in cells_to_run(whole, judged_cells)}
    assert "vsrn" in run
    assert "bfan-prob-offtri" not in run and "scan-adapoffquin" not in run  # rows outside the CI set stay out
    # an ensemble in the CI set brings its members (aoq-table2's BFAN)
    resolved = resolve("aoq-table2", profile="smoke")
    run = {c.id for c in cells_to_run(resolved, gate_cells(resolved, all_cells=False))}
    assert {"vsrn", "bfan-equal-adapoffquin", "bfan-prob-adapoffquin"} <= run
