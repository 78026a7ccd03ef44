"""The command line, end to end: reproduce -> store -> report on the tiny world, bad input,
evaluate against a naive implementation, interruption and resume."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from xmrbench.core.metrics.keys import RETRIEVAL_KEYS

from support import cli, tiny_recipe

# the rows of two-branch-table2 these tests run: its learned models and one CCA (the
# text-feature baselines and Deep CCA have tests of their own)
ROWS = "cca-fv-hglmm-12,linear-single,linear-bi,nonlinear-single,nonlinear-bi,nonlinear-bi-ns,nonlinear-bi-ns-nc,similarity-net"


@pytest.fixture(scope="module")
def smoke_store(tmp_path_factory):
    """two-branch-table2 reproduced once on the tiny world (shared by the report tests)."""
    root = tmp_path_factory.mktemp("store")
    env = {**os.environ, "XMRBENCH_CACHE": str(tmp_path_factory.getbasetemp() / "xmrbench-cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "xmrbench.cli.app", "reproduce", "two-branch-table2", "--profile", "smoke",
         "--seeds", "0,1", "--rows", ROWS, "--results", str(root), "--no-report", "--quiet"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    return root


@pytest.mark.slow
def test_reproduce_writes_complete_result_documents(smoke_store):
    files = sorted((smoke_store / "two-branch-table2").glob("*.json"))
    assert len(files) == 8 * 2  # eight runnable rows x two seeds
    doc = json.loads(next(f for f in files if f.name.startswith("linear-single")).read_text())
    assert doc["schema_version"] == 2 and doc["kind"] == "xmrbench.result"
    assert doc["recipe"]["id"] == "two-branch-table2" and doc["recipe"]["profile"] == "smoke"
    assert set(RETRIEVAL_KEYS) <= set(doc["metrics"]["test"]) and "rsum" in doc["metrics"]["dev"]
    assert len(doc["ranks"]["test"]["i2t"]) == 100 and len(doc["ranks"]["test"]["t2i"]) == 500
    assert doc["dataset"]["name"] == "synthetic-tiny" and len(doc["dataset"]["fingerprint"]) >= 10
    assert doc["protocols"]["test"]["dataset"] == "synthetic-tiny"
    assert doc["env"]["torch"] and doc["env"]["python"]
    epochs = doc["config"]["train"]["epochs"]  # the smoke profile's budget (recipes/_base/two_branch.yaml)
    assert doc["config"]["data"]["size"] == "tiny" and doc["curves"]["epoch"] == list(range(1, epochs + 1))
    assert {"train_s", "eval_s"} <= set(doc["timing"])
    assert doc["convergence"]["criterion"] == "plateau" and doc["convergence"]["epochs"] == epochs
    cca = json.loads(next(f for f in files if f.name.startswith("cca-fv-hglmm-12")).read_text())
    assert cca["convergence"] == {**cca["convergence"], "converged": True, "criterion": "closed form"}
    assert not list(smoke_store.rglob("*.tmp"))
    assert not list((smoke_store / "two-branch-table2" / ".work").glob("*"))  # checkpoints removed
    assert len(list((smoke_store / "two-branch-table2" / "models").glob("*.pt"))) == 16


@pytest.mark.slow
def test_rerun_skips_finished_runs(smoke_store, capsys):
    before = {p: p.stat().st_mtime_ns for p in (smoke_store / "two-branch-table2").glob("*.json")}
    code, out, _ = cli(["reproduce", "two-branch-table2", "--profile", "smoke", "--seeds", "0,1", "--rows", ROWS,
                        "--results", str(smoke_store), "--no-report", "--quiet"], capsys)
    assert code == 0 and "0 run(s) computed, 16 already done" in out
    assert before == {p: p.stat().st_mtime_ns for p in (smoke_store / "two-branch-table2").glob("*.json")}


@pytest.mark.slow
def test_report_formats(smoke_store, capsys):
    code, out, _ = cli(["report", "two-branch-table2", "--markdown", "--results", str(smoke_store)], capsys)
    assert code == 0
    assert "| Embedding, linear, single-dir." in out and "33.5" in out  # paper number
    assert "ours (n=2)" in out and "±" in out
    assert "synthetic-tiny" in out and "NOT COMPARABLE" in out
    assert "Non-linear branches beat linear ones" in out
    assert "paired t-test over seeds" in out
    code, out, _ = cli(["report", "two-branch-table2", "--csv", "--results", str(smoke_store)], capsys)
    rows = list(csv.DictReader(io.StringIO(out)))
    row = next(r for r in rows if r["cell"] == "linear-single" and r["metric"] == "i2t_r1")
    assert row["paper"] == "33.5" and row["n_seeds"] == "2" and row["delta"] == "" and row["comparable"] == "False"
    code, out, _ = cli(["report", "two-branch-table2", "--latex", "--results", str(smoke_store)], capsys)
    assert code == 0 and "\\toprule" in out
    out_file = smoke_store / "table.md"
    code, _, _ = cli(["report", "--markdown", "--out", str(out_file), "--results", str(smoke_store)], capsys)
    assert code == 0 and "two-branch-table2" in out_file.read_text()


@pytest.mark.slow
def test_plan_uses_stored_timings(smoke_store, capsys):
    code, out, _ = cli(["plan", "two-branch-table2", "--profile", "smoke", "--seeds", "0,1,2", "--rows", ROWS,
                        "--results", str(smoke_store)], capsys)
    assert code == 0 and "8 of 24 runs to do" in out and "estimated time left: ~" in out


def test_list_and_show(capsys):
    code, out, _ = cli(["list", "--results", "/nonexistent-store"], capsys)
    assert code == 0 and "two-branch-table2" in out and "vsepp-flickr30k" in out
    code, out, _ = cli(["show", "two-branch-table3", "--json"], capsys)
    data = json.loads(out)
    assert data["id"] == "two-branch-table3" and any(c["hash"] for c in data["cells"])


BAD = {
    "unknown key": ("table: T\n", "table: T\ncolumnz: [rsum]\n", "columnz: unknown key"),
    "wrong type": ("title: x\n", "title: [1, 2]\n", "title:"),
    "missing base": ("extends: ../_base/two_branch.yaml\n", "extends: ../_base/missing.yaml\n", "missing.yaml"),
    "yaml syntax": ("title: x\n", "title: [x\n", "YAML syntax error"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_recipes_give_one_line_and_exit_2(case, tmp_path, capsys):
    good = (Path(__file__).parents[1] / "recipes" / "two_branch" / "table2.yaml").read_text()
    good = good.replace("title: Bi-directional image-sentence retrieval on Flickr30K\n", "title: x\n")
    good = good.replace("table: Table 2\n", "table: T\n")
    old, new, fragment = BAD[case]
    assert old in good
    (tmp_path / "sub").mkdir()
    (tmp_path / "_base").mkdir()
    base = (Path(__file__).parents[1] / "recipes" / "_base" / "two_branch.yaml").read_text()
    (tmp_path / "_base" / "two_branch.yaml").write_text(base)
    path = tmp_path / "sub" / "r.yaml"
    path.write_text(good.replace(old, new))
    code, out, err = cli(["show", str(path)], capsys)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "r.yaml" in lines[0] and fragment in lines[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["show", "no-such-recipe"], "unknown recipe 'no-such-recipe'"),
        (["show", "two-branch-table2", "--set", "train.lr=fast"], "train.lr"),
        (["show", "two-branch-table2", "--set", "model.hiden=3"], "model.hiden: unknown key"),
        (["reproduce", "two-branch-table2", "--profile", "full"], "--data-root"),
        (["reproduce", "two-branch-table2", "--seeds", "a,b"], "--seeds"),
        (["reproduce", "two-branch-table2", "--profile", "huge"], "unknown profile"),
        (["sweep", "two_branch", "--nothing", "1,2"], "no config key"),
        (["report", "--results", "/nonexistent-store"], "no results"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(args, fragment, capsys):
    code, out, err = cli(args, capsys)
    assert code == 2, (out, err)
    assert fragment in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


# ---------------------------------------------------------------------------
# evaluate, against an independent naive implementation


def naive_metrics(sims: np.ndarray, cpi: int) -> dict[str, float]:
    n_img, n_txt = sims.shape
    i2t, t2i = [], []
    for i in range(n_img):
        order = sorted(range(n_txt), key=lambda j: -sims[i, j])
        i2t.append(min(order.index(j) for j in range(i * cpi, (i + 1) * cpi)))
    for j in range(n_txt):
        order = sorted(range(n_img), key=lambda i: -sims[i, j])
        t2i.append(order.index(j // cpi))
    out = {}
    for name, ranks in (("i2t", np.array(i2t)), ("t2i", np.array(t2i))):
        for k in (1, 5, 10):
            out[f"{name}_r{k}"] = 100.0 * np.mean(ranks < k)
        out[f"{name}_medr"] = float(np.floor(np.median(ranks)) + 1)
        out[f"{name}_meanr"] = float(ranks.mean() + 1)
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    return out


@pytest.mark.parametrize(("n_img", "cpi", "seed"), [(20, 5, 0), (13, 5, 1), (30, 2, 2)])
def test_evaluate_json_matches_naive(n_img, cpi, seed, tmp_path, capsys):
    sims = np.random.default_rng(seed).normal(size=(n_img, n_img * cpi)).astype(np.float32)
    np.save(tmp_path / "S.npy", sims)
    code, out, err = cli(["evaluate", "--sims", str(tmp_path / "S.npy"), "--captions-per-image", str(cpi), "--json"], capsys)
    assert code == 0, err
    got = json.loads(out)
    assert list(got) == list(RETRIEVAL_KEYS)
    want = naive_metrics(sims.astype(np.float64), cpi)
    for key in RETRIEVAL_KEYS:
        assert abs(got[key] - want[key]) <= 1e-6, key


def test_evaluate_five_folds_matches_naive(tmp_path, capsys):
    sims = np.random.default_rng(3).normal(size=(25, 125))
    np.save(tmp_path / "S.npy", sims)
    code, out, _ = cli(["evaluate", "--sims", str(tmp_path / "S.npy"), "--protocol", "5fold", "--json"], capsys)
    got = json.loads(out)
    folds = [naive_metrics(sims[f * 5 : (f + 1) * 5, f * 25 : (f + 1) * 25], 5) for f in range(5)]
    for key in RETRIEVAL_KEYS:
        want = np.mean([f[key] for f in folds]) if key != "rsum" else None
        if want is not None:
            assert abs(got[key] - want) <= 1e-6, key
    assert abs(got["rsum"] - sum(got[k] for k in RETRIEVAL_KEYS if k.endswith(("_r1", "_r5", "_r10")))) <= 1e-6


def naive_map(sims, q, g):
    aps = []
    for i in range(sims.shape[0]):
        order = np.argsort(-sims[i], kind="stable")
        rel = [bool(set(np.flatnonzero(q[i])) & set(np.flatnonzero(g[j]))) for j in order]
        hits, precs = 0, []
        for rank, r in enumerate(rel, 1):
            if r:
                hits += 1
                precs.append(hits / rank)
        aps.append(np.mean(precs) if precs else 0.0)
    return float(np.mean(aps))


def test_evaluate_label_map_matches_naive(tmp_path, capsys):
    rng = np.random.default_rng(4)
    sims = rng.normal(size=(15, 40))
    q = (rng.random((15, 6)) < 0.3).astype(np.int64)
    g = (rng.random((40, 6)) < 0.3).astype(np.int64)
    for name, arr in (("S", sims), ("Q", q), ("G", g)):
        np.save(tmp_path / f"{name}.npy", arr)
    code, out, err = cli(["evaluate", "--sims", str(tmp_path / "S.npy"), "--query-labels", str(tmp_path / "Q.npy"),
                          "--gallery-labels", str(tmp_path / "G.npy"), "--json"], capsys)
    assert code == 0, err
    assert abs(json.loads(out)["map"] - naive_map(sims, q, g)) <= 1e-6


@pytest.mark.parametrize(
    ("array", "fragment"),
    [
        (np.zeros((4, 19)), "expected 5 x 4 = 20"),
        (np.zeros(20), "2-D"),
        (np.where(np.eye(4, 20) > 0, np.nan, 0.0), "NaN or inf at row 0, column 0"),
    ],
)
def test_evaluate_bad_input(array, fragment, tmp_path, capsys):
    np.save(tmp_path / "S.npy", array)
    code, _, err = cli(["evaluate", "--sims", str(tmp_path / "S.npy"), "--json"], capsys)
    assert code == 2 and fragment in err and "S.npy" in err and len(err.strip().splitlines()) == 1


def test_evaluate_missing_file(tmp_path, capsys):
    code, _, err = cli(["evaluate", "--sims", str(tmp_path / "none.npy")], capsys)
    assert code == 2 and "none.npy: file not found" in err


def test_data_synth_writes_precomp_layout(tmp_path, capsys):
    code, out, err = cli(["data", "synth", "--size", "tiny", "--out", str(tmp_path / "w")], capsys)
    assert code == 0, err
    for split in ("train", "dev", "test", "testall"):
        assert (tmp_path / "w" / f"{split}_ims.npy").is_file()
        assert (tmp_path / "w" / f"{split}_caps.txt").is_file()
    ims = np.load(tmp_path / "w" / "test_ims.npy", mmap_mode="r")
    assert ims.shape[1:] == (36, 128) and ims.dtype == np.float32
    caps = (tmp_path / "w" / "test_caps.txt").read_text().splitlines()
    assert len(caps) == 5 * ims.shape[0]


@pytest.mark.slow
def test_sweep_runs_a_grid(tmp_path, capsys):
    code, out, err = cli(["sweep", "two_branch", "--margin", "0.05,0.2", "--rows", "nonlinear-bi", "--profile", "smoke",
                          "--seeds", "0", "--results", str(tmp_path)], capsys)
    assert code == 0, err
    files = sorted(p.name for p in (tmp_path / "two-branch-table2.sweep-margin").glob("*.json"))
    assert len(files) == 2 and files[0].startswith("nonlinear-bi_margin_0.05")
    doc = json.loads((tmp_path / "two-branch-table2.sweep-margin" / files[1]).read_text())
    assert doc["config"]["loss"]["margin"] == 0.2
    code, out, _ = cli(["sweep", "two_branch", "--margin", "0.05,0.2", "--rows", "nonlinear-bi", "--dry-run"], capsys)
    assert code == 0 and "nonlinear-bi@margin=0.05" in out


# ---------------------------------------------------------------------------
# interruption


def _start(tmp_path: Path, store: Path) -> subprocess.Popen:
    env = {**os.environ, "XMRBENCH_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "xmrbench.cli.app", "reproduce", "two-branch-table2", "--profile", "smoke",
         "--seeds", "0", "--rows", ROWS, "--results", str(store), "--no-report", "--quiet", "--set", "train.epochs=4"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def _wait_for_results(folder: Path, n: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(list(folder.glob("*.json"))) >= n:
            return
        if proc.poll() is not None:
            pytest.fail(f"reproduce ended early: {proc.stderr.read()}")
        time.sleep(0.05)
    pytest.fail("no results appeared")


@pytest.mark.slow
def test_kill_9_then_rerun_computes_only_the_missing_runs(tmp_path):
    store = tmp_path / "store"
    folder = store / "two-branch-table2"
    proc = _start(tmp_path, store)
    _wait_for_results(folder, 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {p.name: p.read_bytes() for p in folder.glob("*.json")}
    assert 2 <= len(done_before) < 8
    for name in done_before:  # every file present is complete and valid
        json.loads(done_before[name])
    proc = _start(tmp_path, store)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert f"{8 - len(done_before)} run(s) computed, {len(done_before)} already done" in out
    assert len(list(folder.glob("*.json"))) == 8
    assert all(folder.joinpath(n).read_bytes() == b for n, b in done_before.items())  # untouched
    assert not list(store.rglob("*.tmp")) and not list((folder / ".work").glob("*"))


@pytest.mark.slow
def test_ctrl_c_finishes_the_epoch_and_exits_130(tmp_path):
    store = tmp_path / "store"
    proc = _start(tmp_path, store)
    _wait_for_results(store / "two-branch-table2", 1, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130
    assert "run the same command again to resume" in err and "Traceback" not in err
    assert not list(store.rglob("*.tmp"))


ENSEMBLE_RECIPE = tiny_recipe(
    "ens-test",
    """
  - {id: a, label: A}
  - {id: b, label: B, set: {model.linear: true}}
  - {id: ab, label: A+B, ensemble: [a, b]}
""",
    title="ensemble test",
)


def test_ensemble_averages_member_similarities(tmp_path, capsys):
    import torch

    from xmrbench.core.metrics.retrieval import retrieval_metrics
    from xmrbench.engine.evaluate import encode, similarity_matrix
    from xmrbench.recipe.resolve import resolve
    from xmrbench.runner.run import DataCache
    from xmrbench.runner.stored import load_member
    from xmrbench.store.store import ResultStore

    path = tmp_path / "ens.yaml"
    path.write_text(ENSEMBLE_RECIPE)
    store_dir = tmp_path / "store"
    code, out, err = cli(["reproduce", str(path), "--profile", "smoke", "--results", str(store_dir), "--no-report", "--quiet"], capsys)
    assert code == 0, err
    store = ResultStore(store_dir)
    resolved = resolve(path, profile="smoke")
    ens = resolved.cell("ab")
    doc = store.status("ens-test", "ab", ens.hash, 0).doc
    assert doc is not None and set(doc.config["ensemble"]) == {"a", "b"}
    cache = DataCache()
    sims = []
    for member in ens.members:
        model, prepared = load_member(store, resolved, member, 0, cache, torch.device("cpu"))
        split = prepared.split("test")
        sims.append(similarity_matrix(model, encode(model, split, device=torch.device("cpu"), batch_size=64), block_images=1000))
    want = retrieval_metrics((sims[0] + sims[1]) / 2)
    assert doc.metrics["test"] == pytest.approx(want)


def test_rows_restricts_the_runs_to_the_named_rows_and_their_members(tmp_path, capsys):
    recipe = tmp_path / "ens.yaml"
    recipe.write_text(ENSEMBLE_RECIPE)
    store = str(tmp_path / "store")
    code, out, _ = cli(["plan", str(recipe), "--profile", "smoke", "--rows", "b", "--results", store], capsys)
    assert code == 0 and "1 of 1 runs to do" in out
    code, out, _ = cli(["plan", str(recipe), "--profile", "smoke", "--rows", "ab", "--results", store], capsys)
    assert code == 0 and "3 of 3 runs to do" in out  # the ensemble and its two members
    code, _, err = cli(["reproduce", str(recipe), "--profile", "smoke", "--rows", "a,zz", "--results", store], capsys)
    assert code == 2 and "no row(s) zz" in err and len(err.strip().splitlines()) == 1
