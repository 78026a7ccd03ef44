"""Figures for a recipe's results, written as PNG files (matplotlib, no display needed).

- ``curves``: dev score per epoch for every cell (mean over seeds, band = min..max);
- ``ranks``: histograms of the test ranks (log scale) per cell, both directions;
- ``paper_vs_ours``: one bar group per cell and metric, paper beside ours (mean ± std),
  titled with the dataset ours was measured on;
- ``sweep``: for sweep recipes, the first protocol's rsum against each swept value;
- the paper's own figures a recipe declares under ``figures`` (:func:`paper_figures`):
  ``lines`` (a metric against a grid key, one line per row) and ``tsne`` (t-SNE maps of
  the test embeddings of stored models, one panel per cell).

Every figure names the dataset ours was measured on, so a synthetic-world figure is
never mistaken for a Flickr30K or MS-COCO one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never a window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from xmrbench.core.metrics import keys as K  # noqa: E402
from xmrbench.recipe.schema import Figure  # noqa: E402
from xmrbench.report.collect import TableReport  # noqa: E402
from xmrbench.store.schema import ResultDoc  # noqa: E402
from xmrbench.store.store import safe_name  # noqa: E402


def _subtitle(rep: TableReport) -> str:
    return f"ours: {', '.join(rep.datasets) or 'no results'} | profile {rep.resolved.profile} | seeds {len(rep.seeds)}"


def _docs_by_cell(rep: TableReport) -> dict[str, list[ResultDoc]]:
    return {c.id: c.docs for c in rep.cells if c.docs}


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def curves(rep: TableReport, out_dir: Path) -> Path | None:
    docs = _docs_by_cell(rep)
    series = {cid: [d.curves for d in ds if d.curves.get("epoch")] for cid, ds in docs.items()}
    series = {cid: cs for cid, cs in series.items() if cs}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for cid, cs in series.items():
        n = min(len(c["dev_rsum"]) for c in cs)
        values = np.array([c["dev_rsum"][:n] for c in cs])
        epochs = np.asarray(cs[0]["epoch"][:n])
        dev_images = docs[cid][0].config.get("eval", {}).get("dev_images")
        label = cid if dev_images is None else f"{cid} (dev: first {dev_images} images)"
        ax.plot(epochs, values.mean(0), label=label)
        if len(cs) > 1:
            ax.fill_between(epochs, values.min(0), values.max(0), alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("dev rsum")
    ax.set_title(f"{rep.recipe.id}: training curves\n{_subtitle(rep)}", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, out_dir / f"{safe_name(rep.recipe.id)}-curves.png")


def ranks(rep: TableReport, out_dir: Path) -> Path | None:
    proto = rep.recipe.default_protocol
    docs = _docs_by_cell(rep)
    have = {cid: ds for cid, ds in docs.items() if any(proto in d.ranks for d in ds)}
    if not have:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, direction in zip(axes, ("i2t", "t2i")):
        longest = max(max(d.ranks[proto][direction]) for ds in have.values() for d in ds if proto in d.ranks) + 1
        bins = np.unique(np.logspace(0, np.log10(max(longest, 2)), 30).astype(int))
        for cid, ds in have.items():
            r = np.concatenate([np.asarray(d.ranks[proto][direction]) + 1 for d in ds if proto in d.ranks])
            ax.hist(r, bins=bins, histtype="step", weights=np.full(len(r), 1.0 / len(r)), label=cid)
        ax.set_xscale("log")
        ax.set_xlabel(f"{direction} rank (1 = best), log bins")
    axes[0].set_ylabel("fraction of queries")
    axes[1].legend(fontsize=7)
    fig.suptitle(f"{rep.recipe.id}: rank histograms ({proto})\n{_subtitle(rep)}", fontsize=9)
    return _save(fig, out_dir / f"{safe_name(rep.recipe.id)}-ranks.png")


def paper_vs_ours(rep: TableReport, out_dir: Path) -> Path | None:
    proto = rep.recipe.default_protocol
    metrics = [m for m in rep.metric_columns() if K.METRICS[m].scale == "percent" and m != K.RSUM]
    cells = [c for c in rep.cells if c.ours.get(proto) or (c.runnable and c.paper.get(proto))]
    if not cells or not metrics:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.2 * len(metrics), 0.35 * len(cells) + 1.8), sharey=True)
    axes = np.atleast_1d(axes)
    y = np.arange(len(cells))
    for ax, metric in zip(axes, metrics):
        paper = [c.paper.get(proto, {}).get(metric) for c in cells]
        ours = [c.ours.get(proto, {}).get(metric) for c in cells]
        ax.barh(y - 0.2, [p if p is not None else 0 for p in paper], height=0.4, color="0.7", label="paper")
        ax.barh(
            y + 0.2,
            [o.mean if o else 0 for o in ours],
            xerr=[o.std if o else 0 for o in ours],
            height=0.4,
            color="tab:blue",
            label="ours",
        )
        ax.set_title(metric, fontsize=8)
        ax.set_xlim(0, 100)
    axes[0].set_yticks(y, [c.id for c in cells], fontsize=7)
    axes[0].invert_yaxis()
    axes[-1].legend(fontsize=7)
    comparable = rep.comparable_any(proto)
    tag = "" if comparable else " (NOT comparable: different datasets/protocols)"
    fig.suptitle(f"{rep.recipe.id} ({rep.recipe.table}): paper vs ours{tag}\n{_subtitle(rep)}", fontsize=9)
    return _save(fig, out_dir / f"{safe_name(rep.recipe.id)}-paper-vs-ours.png")


def sweep(rep: TableReport, out_dir: Path) -> Path | None:
    recipe = rep.recipe
    if not recipe.grid:
        return None
    proto = recipe.default_protocol
    fig, ax = plt.subplots(figsize=(6, 4))
    key = next(iter(recipe.grid))
    for row in recipe.rows:
        xs, ys, es = [], [], []
        for value in recipe.grid[key]:
            cell = next((c for c in rep.cells if c.id.startswith(f"{row.id}@") and _point_value(rep, c.id, key) == value), None)
            ours = cell.ours.get(proto, {}).get(K.RSUM) if cell else None
            if ours is not None:
                xs.append(value)
                ys.append(ours.mean)
                es.append(ours.std)
        if xs:
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=row.id)
    ax.set_xlabel(key)
    ax.set_ylabel(f"rsum ({proto})")
    ax.set_title(f"{recipe.id}\n{_subtitle(rep)}", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, out_dir / f"{safe_name(recipe.id)}-sweep.png")


def _point_value(rep: TableReport, cell_id: str, key: str):
    return rep.resolved.cell(cell_id).point.get(key)


def lines_figure(rep: TableReport, fig: Figure, out_dir: Path) -> Path | None:
    """A declared ``lines`` figure: ``fig.metric`` against the grid key ``fig.x``, one line
    per row (mean over seeds, band from the lowest to the highest seed)."""
    recipe = rep.recipe
    proto = fig.protocol or recipe.default_protocol
    rows = fig.rows or tuple(r.id for r in recipe.rows if r.run)
    by_id = {c.id: c for c in rep.cells}
    figure, ax = plt.subplots(figsize=(6.5, 4.5))
    drawn = False
    for row_id in rows:
        xs, ys, lo, hi = [], [], [], []
        for cell in rep.resolved.cells:
            if cell.row.id != row_id or fig.x not in cell.point:
                continue
            docs = by_id[cell.id].docs if cell.id in by_id else []
            values = [d.metrics[proto][fig.metric] for d in docs if fig.metric in d.metrics.get(proto, {})]
            if values:
                xs.append(cell.point[fig.x])
                ys.append(float(np.mean(values)))
                lo.append(min(values))
                hi.append(max(values))
        if xs:
            order = np.argsort(xs)
            xs_, ys_ = np.asarray(xs)[order], np.asarray(ys)[order]
            line = ax.plot(xs_, ys_, marker="o", label=next(r.label for r in recipe.rows if r.id == row_id))[0]
            ax.fill_between(xs_, np.asarray(lo)[order], np.asarray(hi)[order], alpha=0.15, color=line.get_color())
            drawn = True
    if not drawn:
        plt.close(figure)
        return None
    for label, value in fig.hlines.items():
        ax.axhline(value, linestyle="--", color="0.4", linewidth=1)
        ax.annotate(label, (ax.get_xlim()[0], value), fontsize=7, color="0.3", va="bottom")
    ax.set_xlabel(fig.x_label or fig.x)
    ax.set_ylabel(f"{fig.metric} ({proto})")
    ax.set_title(f"{recipe.id}: {fig.title}\n{_subtitle(rep)}", fontsize=9)
    ax.legend(fontsize=7)
    return _save(figure, out_dir / f"{safe_name(recipe.id)}-{safe_name(fig.id)}.png")


def tsne_points(img_emb: np.ndarray, txt_emb: np.ndarray, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """2-D t-SNE coordinates of images and captions mapped together (scikit-learn,
    seeded, cosine distances as the embeddings are compared by their dot product)."""
    from sklearn.manifold import TSNE

    both = np.concatenate([img_emb, txt_emb]).astype(np.float64)
    perplexity = float(min(30.0, max(2.0, (len(both) - 1) / 3)))
    xy = TSNE(n_components=2, perplexity=perplexity, metric="cosine", init="random",
              random_state=seed).fit_transform(both)
    return xy[: len(img_emb)], xy[len(img_emb):]


#: ``embed(resolved, cell, seed, split, images)`` -> (image embeddings, caption embeddings,
#: captions per image), or None when that run has no stored model to embed with
#: (``xmrbench.runner.stored.stored_embedder`` reads a store's models)
Embedder = Callable[[Any, Any, int, str, int], "tuple[np.ndarray, np.ndarray, int] | None"]


def tsne_figure(rep: TableReport, fig: Figure, out_dir: Path, embed: Embedder) -> Path | None:
    """A declared ``tsne`` figure: per panel, the stored model of run ``fig.seed`` of its
    cell embeds the first ``fig.images`` images of the protocol's split and all their
    captions (``embed``); images blue, captions red (as the paper draws them), one grey
    segment per image to each of its captions. Panels without a stored run are left out."""
    from xmrbench.core.metrics.protocols import PROTOCOLS

    recipe = rep.recipe
    proto = PROTOCOLS[fig.protocol or recipe.default_protocol]
    panels = []
    for panel in fig.panels:
        got = embed(rep.resolved, rep.resolved.cell(panel.cell), fig.seed, proto.split, fig.images)
        if got is not None:
            img, txt, per_image = got
            panels.append((panel, per_image, *tsne_points(img, txt, seed=fig.seed)))
    if not panels:
        return None
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.4))
    for ax, (panel, per_image, img_xy, txt_xy) in zip(np.atleast_1d(axes), panels):
        for i, (x, y) in enumerate(img_xy):
            for j in range(i * per_image, min((i + 1) * per_image, len(txt_xy))):
                ax.plot([x, txt_xy[j, 0]], [y, txt_xy[j, 1]], color="0.85", linewidth=0.4, zorder=1)
        ax.scatter(txt_xy[:, 0], txt_xy[:, 1], s=6, color="tab:red", label="sentences", zorder=2)
        ax.scatter(img_xy[:, 0], img_xy[:, 1], s=10, color="tab:blue", label="images", zorder=3)
        ax.set_title(panel.title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    np.atleast_1d(axes)[0].legend(fontsize=7, loc="best")
    figure.suptitle(f"{recipe.id}: {fig.title} (seed {fig.seed}, first {fig.images} test images)\n{_subtitle(rep)}",
                    fontsize=9)
    return _save(figure, out_dir / f"{safe_name(recipe.id)}-{safe_name(fig.id)}.png")


def paper_figures(rep: TableReport, out_dir: Path, embed: Embedder | None = None) -> list[Path]:
    """The figures the recipe declares (``figures``); ``tsne`` ones need ``embed``, which
    reads the runs' stored models."""
    made = []
    for fig in rep.recipe.figures:
        if fig.kind == "lines":
            made.append(lines_figure(rep, fig, out_dir))
        elif embed is not None:
            made.append(tsne_figure(rep, fig, out_dir, embed))
    return [p for p in made if p is not None]


def all_figures(rep: TableReport, out_dir: Path, embed: Embedder | None = None) -> list[Path]:
    """Every figure that the recipe's results support; returns the files written."""
    made = [curves(rep, out_dir), ranks(rep, out_dir), paper_vs_ours(rep, out_dir), sweep(rep, out_dir)]
    return [p for p in made if p is not None] + paper_figures(rep, out_dir, embed)
