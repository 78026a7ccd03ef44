"""The paper-table recipes: numbers as printed (compared as numbers, so '0.220' and
'39.60' match, and AOQ's 'value (difference)' cells are read), protocols that say
what the paper measured, promised model names, runnable baselines, claims with
section references, and one smoke run of each closed-form baseline."""

from __future__ import annotations

import functools
import re
import tempfile
from pathlib import Path

import pytest
import torch

from xmrbench.core.models.registry import MODELS
from xmrbench.recipe.lint import normalized_values
from xmrbench.recipe.load import load_recipe, recipe_index
from xmrbench.recipe.resolve import resolve

from papers import require_papers
from support import chance_rsum

# a printed number, optionally followed by a parenthesised signed difference: "98.2 (-0.3)", "1.1(-76.2)"
CELL = re.compile(r"(?<![\w.])(\d+(?:,\d{3})*(?:\.\d+)?)(?![\w.])(?:\s*\(([+-]\d+(?:\.\d+)?)\))?")

PAPER_RECIPES = {
    "a3vse": {"a3vse-table1", "a3vse-table2", "a3vse-table3", "a3vse-table4", "a3vse-table5", "a3vse-figure1",
              "a3vse-figure3"},
    "aoq": {"aoq-table1", "aoq-table2", "aoq-table3", "aoq-table4", "aoq-table5"},
    "adapt": {"adapt-table1", "adapt-table2", "adapt-table3", "adapt-table4", "adapt-figure3"},
    "acmr": {
        "acmr-table2-shallow", "acmr-table2-deep", "acmr-table3-pascal", "acmr-table3-nuswide",
        "acmr-table4", "acmr-table5-wikipedia", "acmr-table5-pascal",
        "acmr-figure3", "acmr-figure4", "acmr-figure5", "acmr-figure6",
    },
    "two_branch": {
        "two-branch-table1", "two-branch-table2", "two-branch-table3", "two-branch-table4-flickr30k",
        "two-branch-table4-mscoco", "two-branch-table5",
    },
}
ALL = sorted(set().union(*PAPER_RECIPES.values()))
# model names the pending rows promise to the issues that will switch them on
PROMISED_MODELS = {"scan", "bfan", "vsrn", "dpc", "dan", "cca", "sg_baseline", "vsepp",
                   "two_branch_embedding", "two_branch_similarity", "a3vse", "order_embeddings", "adapt", "acmr", "cca3v", "corr_ae",
                   "deep_cca"}
PROTOCOL_SHAPE = {  # protocol -> (split, folds)
    "test": ("test", 1), "dev": ("dev", 1), "testall": ("testall", 1), "testall_5fold": ("testall", 5),
    "test_labels": ("test", 1), "test_r10_fraction": ("test", 1), "test_phrases": ("test", 1),
}


@functools.cache
def _lines(papers: Path) -> list[list[tuple[float, float | None]]]:
    out = []
    for path in sorted(papers.glob("*.md")):
        for line in path.read_text(encoding="utf-8").splitlines():
            clean = re.sub(r"<[^>]+>", " ", line).replace("\\", " ")
            cells = [(float(v.replace(",", "")), float(d) if d else None) for v, d in CELL.findall(clean)]
            if cells:
                out.append(cells)
    return out


def _find(lines, values: list[float]):
    """The cells of the first line holding ``values`` consecutively (differences skipped), or None."""
    n = len(values)
    for cells in lines:
        for i in range(len(cells) - n + 1):
            if [v for v, _ in cells[i : i + n]] == values:
                return cells[i : i + n]
    return None


@functools.cache
def _index() -> dict[str, Path]:
    return recipe_index()


@functools.cache
def _recipe(rid: str):
    return load_recipe(_index()[rid])[0]


def _resolve(rid: str, profile: str, **kw):
    return resolve(_recipe(rid), path=_index()[rid], profile=profile, **kw)


def test_every_table_has_its_recipe():
    missing = sorted(set(ALL) - set(_index()))
    assert not missing
    for paper, ids in PAPER_RECIPES.items():
        assert {_recipe(rid).paper for rid in ids} == {paper}


@pytest.mark.parametrize("rid", ALL)
def test_numbers_are_printed_in_order_on_one_line(rid):
    lines = _lines(require_papers())
    recipe = _recipe(rid)
    sources = [(row.id, row.paper) for row in recipe.rows] + list(recipe.paper_values.items())
    if recipe.kind == "figure" and not any(values for _, values in sources):
        return  # a figure that prints no numbers (ADAPT's Figure 3): nothing to find
    checked, missing = 0, []
    for cell_id, values in sources:
        for proto, metrics in normalized_values(recipe, values).items():
            run = [float(metrics[c]) for c in recipe.columns if metrics.get(c) is not None]
            if run:
                checked += 1
                if _find(lines, run) is None:
                    missing.append(f"{cell_id} {proto}: {run}")
    assert checked and not missing


def test_aoq_table3_differences_lead_back_to_the_reference_rows():
    """Each printed '(difference)' is the cell minus the final-setting model (Table 1's 1K row)."""
    lines = _lines(require_papers())
    recipe = _recipe("aoq-table3")
    reference = {row.id.split("-")[0]: row.paper["testall_5fold"] for row in recipe.rows
                 if row.source and row.id.endswith("-adapoffquin")}
    assert set(reference) == {"bfan", "vsrn"}
    variants = [row for row in recipe.rows if not row.source and row.paper]  # printed ablation rows
    assert len(variants) == 11
    for row in variants:
        values = row.paper["testall_5fold"]
        cells = _find(lines, [float(v) for v in values])
        assert cells is not None and all(d is not None for _, d in cells), row.id
        ref = reference[row.id.split("-")[0]]
        assert [round(v - d, 1) for v, d in cells] == pytest.approx(ref), row.id


@pytest.mark.parametrize("rid", ALL)
def test_protocols_describe_the_papers_measurements(rid):
    recipe = _recipe(rid)
    for name, proto in recipe.protocols.items():
        split, folds = PROTOCOL_SHAPE[name]
        assert (proto.split, proto.folds) == (split, folds), (rid, name)
        assert proto.images and proto.features and proto.dataset
        if name.startswith("testall"):
            assert proto.dataset == "mscoco" and proto.images == 5000
    if recipe.paper == "acmr":
        # Table 4's "mAP" is R@10 / 100 of MS-COCO 1K retrieval (its recipe's notes)
        expected = ("i2t_r10_frac", "t2i_r10_frac", "avg_r10_frac") if rid == "acmr-table4" else \
            ("i2t_map", "t2i_map", "avg_map")
        assert recipe.columns == expected
        # label retrieval over image-text pairs; Table 4 quotes MS-COCO caption retrieval (5 per image)
        expected = 5 if rid == "acmr-table4" else 1
        assert all(p.captions_per_image == expected for p in recipe.protocols.values())
    if recipe.paper == "a3vse":  # A3VSE prints text-to-image first
        assert recipe.columns[:3] == ("t2i_r1", "t2i_r5", "t2i_r10")


@pytest.mark.parametrize("rid", ALL)
def test_rows_claims_and_notes(rid):
    recipe = _recipe(rid)
    assert recipe.notes, rid
    assert recipe.claims and all(claim.where for claim in recipe.claims), rid
    for row in recipe.rows:
        name = row.set.get("model.name")
        assert name is None or name in PROMISED_MODELS, (rid, row.id, name)
        if not row.run:
            assert row.pending, (rid, row.id)
    for profile in recipe.profiles:
        resolved = _resolve(rid, profile, require_data=False)
        for cell in resolved.runnable_cells():
            assert cell.config.model.name in MODELS


# the rows that run with the baselines of this issue and the models that existed before it
RUNNABLE = {
    "a3vse-table2": {"sg-baseline", "vsepp-img10-s5", "vsepp-img50-s2", "vsepp-all"},
    "a3vse-table4": {"sg-baseline", "vsepp-img10-s1", "vsepp-img50-s2", "vsepp-all"},
    "adapt-table1": {"vsepp"},
    "adapt-table2": {"vsepp"},
    "two-branch-table4-flickr30k": {"nonlinear-bi", "nonlinear-bi-ns", "nonlinear-bi-ns-nc"},
    "two-branch-table4-mscoco": {"nonlinear-bi", "nonlinear-bi-ns", "nonlinear-bi-ns-nc"},
    "two-branch-table5": {"image-sentence"},
}


@pytest.mark.parametrize("profile", ["smoke", "quick", "full"])
def test_runnable_baselines_resolve_in_every_profile(profile):
    for rid in ALL:
        resolved = _resolve(rid, profile, require_data=False)
        runnable = {c.id for c in resolved.runnable_cells()}
        if rid in RUNNABLE:  # at least these (other rows switch on as their models arrive)
            assert RUNNABLE[rid] <= runnable, rid
        for cell in resolved.runnable_cells():
            cfg = cell.config
            if cfg.model.name in ("cca", "sg_baseline"):
                assert cfg.loss is None
            if cfg.model.name == "sg_baseline":
                assert (cfg.model.params.image_input, cfg.model.params.text_input) == ("tags", "tags")
            if cell.id.startswith("vsepp-img"):
                assert cfg.data.sparse_images in (0.1, 0.5) and cfg.data.sparse_sentences in (1, 2, 5)
            if rid.startswith("two-branch-table4"):
                assert cfg.eval.sentence_retrieval
    table2 = _resolve("two-branch-table2", profile, require_data=False)
    cca = table2.cell("cca-fv-hglmm-12").config
    assert cca.model.name == "cca" and cca.loss is None
    assert cca.model.params.text_input == "tfidf"
    assert cca.model.params.image_input == ("mean_regions" if profile == "full" else "global")
    table3 = _resolve("two-branch-table3", profile, require_data=False)
    assert table3.cell("cca-fv-2a").config.model.name == "cca"


@pytest.mark.slow
@pytest.mark.parametrize("rid,cell_id", [("two-branch-table2", "cca-fv-hglmm-12"), ("a3vse-table2", "sg-baseline")])
def test_closed_form_baselines_run_on_the_tiny_world(rid, cell_id):
    from xmrbench.runner.run import DataCache, run_one
    from xmrbench.store.store import ResultStore

    resolved = _resolve(rid, "smoke")
    with tempfile.TemporaryDirectory() as root:
        doc, path = run_one(resolved, resolved.cell(cell_id), 0, store=ResultStore(Path(root)),
                            cache=DataCache(), device=torch.device("cpu"))
        assert path.is_file()
    assert doc.config["loss"] is None
    test = doc.metrics["test"]
    assert 0 <= test["t2i_r1"] <= test["t2i_r5"] <= test["t2i_r10"] <= 100
    n_images = len(doc.ranks["test"]["i2t"])
    cpi = len(doc.ranks["test"]["t2i"]) // n_images
    # far above a random ranking: 4 x chance (100 images x 5 captions: 31.6, so above 126);
    # measured: CCA 341.8, s_g 385.4 (closed form, the same for every seed)
    assert test["rsum"] > 4 * chance_rsum(n_images, cpi)
