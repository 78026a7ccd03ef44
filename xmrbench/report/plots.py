"""Figures for a recipe's results, written as PNG files (matplotlib, no display needed).

- ``curves``: dev score per epoch for every cell (mean over seeds, band = min..max);
- ``ranks``: histograms of the test ranks (log scale) per cell, both directions;
- ``paper_vs_ours``: one bar group per cell and metric, paper beside ours (mean ± std),
  titled with the dataset ours was measured on;
- ``sweep``: for sweep recipes, the first protocol's rsum against each swept value;
- the paper's own figures a recipe declares under ``figures`` (:func:`paper_figures`):
  ``lines`` (a metric against a grid key, one line per row), ``tsne`` (t-SNE maps of
  the test embeddings of stored models, one panel per cell), ``curves`` (stored training
  curves against the epoch, one subplot per curve), ``cross_rank`` (the positive
  pairs of a split counted by cross-retrieval rank, scored by stored models),
  ``speed_accuracy`` (a metric against the evaluation time the runs measured, marker
  area by parameter count) and ``precision_scope`` (ACMR Figure 3: the stored precision
  at the top K against K, one panel per direction, one line per cell).

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
from matplotlib.ticker import MaxNLocator  # noqa: E402

from xmrbench.core.metrics import keys as K  # noqa: E402
from xmrbench.core.metrics.cross_rank import CROSS_RANK_BINS, cross_rank_counts, cross_retrieval_ranks  # noqa: E402
from xmrbench.recipe.resolve import Cell  # noqa: E402
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
    # the dev split's rsum (image-sentence) or mean mAP (label retrieval, ACMR)
    key = "dev_rsum" if all("dev_rsum" in c for cs in series.values() for c in cs) else "dev_avg_map"
    series = {cid: cs for cid, cs in series.items() if all(key in c for c in cs)}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for cid, cs in series.items():
        epochs, values = _padded([c["epoch"] for c in cs], [c[key] for c in cs])
        dev_images = docs[cid][0].config.get("eval", {}).get("dev_images")
        label = cid if dev_images is None else f"{cid} (dev: first {dev_images} images)"
        _mean_and_band(ax, epochs, values, label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("dev rsum" if key == "dev_rsum" else "dev mean mAP")
    ax.set_title(f"{rep.recipe.id}: training curves\n{_subtitle(rep)}", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, out_dir / f"{safe_name(rep.recipe.id)}-curves.png")


def ranks(rep: TableReport, out_dir: Path) -> Path | None:
    proto = rep.recipe.default_protocol
    docs = _docs_by_cell(rep)
    # per-query ranks of both directions (a label task stores none)
    has = lambda d: bool(d.ranks.get(proto, {}).get("i2t")) and bool(d.ranks.get(proto, {}).get("t2i"))  # noqa: E731
    have = {cid: [d for d in ds if has(d)] for cid, ds in docs.items() if any(has(d) for d in ds)}
    if not have:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, direction in zip(axes, ("i2t", "t2i")):
        longest = max(max(d.ranks[proto][direction]) for ds in have.values() for d in ds) + 1
        bins = np.unique(np.logspace(0, np.log10(max(longest, 2)), 30).astype(int))
        for cid, ds in have.items():
            r = np.concatenate([np.asarray(d.ranks[proto][direction]) + 1 for d in ds])
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


def star_sweep_figure(series: dict[str, list[tuple[Any, list[float]]]], *, title: str, metric: str, protocol: str,
                      datasets: list[str], path: Path) -> Path | None:
    """A sweep of one parameter at a time (ACMR Figure 6, say): one panel per swept key,
    ``metric`` on ``protocol`` against the key's values (mean over seeds, band from the
    lowest to the highest seed), the values spaced evenly and labelled as given, since
    such sweeps mix 0 with powers of ten."""
    keys = [k for k, points in series.items() if any(vals for _, vals in points)]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.8), squeeze=False)
    for ax, key in zip(axes[0], keys):
        points = [(v, vals) for v, vals in series[key] if vals]
        xs = np.arange(len(points))
        means = np.array([np.mean(vals) for _, vals in points])
        ax.plot(xs, means, marker="o")
        ax.fill_between(xs, [min(vals) for _, vals in points], [max(vals) for _, vals in points], alpha=0.2)
        ax.set_xticks(xs, [str(v) for v, _ in points])
        ax.set_xlabel(key)
        ax.set_ylabel(f"{metric} ({protocol})")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title}\nours: {', '.join(datasets) or 'no results'} | mean over seeds, band = min..max", fontsize=9)
    return _save(fig, path)


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


def _figure_cells(rep: TableReport, fig: Figure) -> list[Cell]:
    """The runnable cells of the figure's ``rows`` (default: every runnable row), in order."""
    rows = fig.rows or tuple(r.id for r in rep.recipe.rows if r.run)
    return [cell for row_id in rows for cell in rep.resolved.cells if cell.row.id == row_id and cell.runnable]


#: axis labels of the stored curves a ``curves`` figure usually draws (others: the key)
_CURVE_LABELS = {"dev_i2t_r1": "i2t R@1 (dev)", "dev_t2i_r1": "t2i R@1 (dev)", "dev_rsum": "rsum (dev)",
                 "dev_score": "selection score (dev)", "train_loss": "training loss",
                 "dev_avg_map": "mean mAP (dev)", "emb_loss": "embedding loss L_emb", "adv_loss": "adversarial loss L_adv"}


def _padded(epochs: list[list[int]], curves: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Seeds' curves of different lengths (early stopping) as epochs ``(E,)`` of the
    longest and values ``(S, E)``, NaN where a seed had stopped."""
    n = [min(len(e), len(c)) for e, c in zip(epochs, curves)]
    longest = int(np.argmax(n))
    values = np.full((len(curves), n[longest]), np.nan)
    for row, (c, k) in enumerate(zip(curves, n)):
        values[row, :k] = c[:k]
    return np.asarray(epochs[longest][: n[longest]]), values


def _mean_and_band(ax: Any, epochs: np.ndarray, values: np.ndarray, label: str) -> None:
    """The mean over the seeds still running at each epoch: solid while every seed runs,
    dotted after the first stopped; a band from the lowest to the highest seed where at
    least two run."""
    running = (~np.isnan(values)).sum(0)
    mean = np.nanmean(values, axis=0)
    every = running == len(values)
    line = ax.plot(np.where(every, epochs, np.nan), np.where(every, mean, np.nan), label=label)[0]
    if not every.all():
        tail = np.flatnonzero(~every)[0] - 1  # join the dotted part to the solid one
        ax.plot(epochs[max(tail, 0):], mean[max(tail, 0):], linestyle=":", color=line.get_color())
    if len(values) > 1:  # every column holds the longest run's value: no empty slices
        ax.fill_between(epochs, np.nanmin(values, axis=0), np.nanmax(values, axis=0), where=running >= 2,
                        alpha=0.2, color=line.get_color())


def curves_data(rep: TableReport, fig: Figure) -> dict[str, list[tuple[Cell, np.ndarray, np.ndarray]]]:
    """Per stored curve of ``fig.series`` that some cell has: (cell, epochs ``(E,)`` of its
    longest run, values ``(S, E)`` over its S seeds, NaN after a seed stopped early), per
    cell of ``fig.rows`` in order. Cells whose results lack the curve (older results,
    ensembles) are left out."""
    by_id = {c.id: c for c in rep.cells}
    drawn: dict[str, list[tuple[Cell, np.ndarray, np.ndarray]]] = {}
    for key in fig.series:
        for cell in _figure_cells(rep, fig):
            docs = by_id[cell.id].docs if cell.id in by_id else []
            have = [d for d in docs if d.curves.get(key) and d.curves.get("epoch")]
            if have:
                epochs, values = _padded([d.curves["epoch"] for d in have], [d.curves[key] for d in have])
                drawn.setdefault(key, []).append((cell, epochs, values))
    return drawn


def curves_figure(rep: TableReport, fig: Figure, out_dir: Path) -> Path | None:
    """A declared ``curves`` figure (AOQ Figure 4): one subplot per stored curve in
    ``fig.series``, one line per cell of ``fig.rows`` against the epoch (mean over the
    seeds still running, dotted once one has stopped early; band from the lowest to the
    highest seed). Cells without the curve are left out
    (:func:`curves_data`); None when nothing is left to draw."""
    recipe = rep.recipe
    drawn = curves_data(rep, fig)
    if not drawn:
        return None
    by_id = {c.id: c for c in rep.cells}
    dev_images = {n for lines in drawn.values() for cell, _, _ in lines for d in by_id[cell.id].docs
                  if (n := d.config.get("eval", {}).get("dev_images"))}  # the dev subsets measured on
    figure, axes = plt.subplots(1, len(drawn), figsize=(5.2 * len(drawn), 4.2), squeeze=False, layout="constrained")
    for ax, (key, lines) in zip(axes[0], drawn.items()):
        for cell, epochs, values in lines:
            _mean_and_band(ax, epochs, values, cell.label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(_CURVE_LABELS.get(key, key))
        ax.set_title(key, fontsize=8)
        ax.legend(fontsize=7)
    dev = f" (dev: first {'/'.join(map(str, sorted(dev_images)))} images)" if dev_images else ""
    figure.suptitle(f"{recipe.id}: {fig.title}{dev}\n{_subtitle(rep)}", fontsize=9)
    return _save(figure, out_dir / f"{safe_name(recipe.id)}-{safe_name(fig.id)}.png")


#: ``score(resolved, cell, seed, split)`` -> the similarity matrix ``(N_img, N_txt)`` of
#: the whole split (rows = images, ``N_txt = c * N_img``), or None when that run has no
#: stored model (``xmrbench.runner.stored.stored_scorer`` reads a store's models)
Scorer = Callable[[Any, Any, int, str], "np.ndarray | None"]


def cross_rank_data(rep: TableReport, fig: Figure, score: Scorer) -> list[tuple[Cell, np.ndarray, int]]:
    """Per cell of ``fig.rows`` with a stored run ``fig.seed``: (cell, positive pairs per
    bin of ``CROSS_RANK_BINS`` ``(len(bins),)``, captions per image ``c``), with ``c`` read
    off the matrix (``N_txt // N_img``). Cells without a stored model are left out."""
    from xmrbench.core.metrics.protocols import PROTOCOLS

    proto = PROTOCOLS[fig.protocol or rep.recipe.default_protocol]
    out = []
    for cell in _figure_cells(rep, fig):
        sims = score(rep.resolved, cell, fig.seed, proto.split)
        if sims is None:
            continue
        per_image = sims.shape[1] // max(1, sims.shape[0])
        out.append((cell, cross_rank_counts(cross_retrieval_ranks(sims, per_image)), per_image))
    return out


def cross_rank_figure(rep: TableReport, fig: Figure, out_dir: Path, score: Scorer) -> Path | None:
    """A declared ``cross_rank`` figure (AOQ Figure 6): for each cell of ``fig.rows``, the
    positive pairs of the protocol's whole split counted per cross-retrieval rank bin
    (1, 2-5, 6-10, 11-50, 51-200, > 200; rank ``max(c r_i - (c - 1), r_t)``, ties
    against the pair), as grouped bars, from the stored model of run ``fig.seed``
    (``score``). None when no cell has a stored model."""
    from xmrbench.core.metrics.protocols import PROTOCOLS

    data = cross_rank_data(rep, fig, score)
    if not data:
        return None
    recipe = rep.recipe
    proto = PROTOCOLS[fig.protocol or recipe.default_protocol]
    x = np.arange(len(CROSS_RANK_BINS))
    width = 0.8 / len(data)
    figure, ax = plt.subplots(figsize=(6 + 0.8 * len(data), 4.5))
    for k, (cell, counts, _) in enumerate(data):
        bars = ax.bar(x - 0.4 + width * (k + 0.5), counts, width=width, label=cell.label)
        ax.bar_label(bars, fontsize=6)
    per_image = sorted({c for _, _, c in data})
    pairs = sorted({int(counts.sum()) for _, counts, _ in data})
    ax.set_xticks(x, [name for name, _, _ in CROSS_RANK_BINS])
    ax.set_xlabel(f"cross-retrieval rank max(c·r_i − (c−1), r_t), c = {', '.join(map(str, per_image))}; "
                  "ties count against the pair")
    ax.set_ylabel("positive pairs")
    ax.legend(fontsize=7)
    ax.set_title(f"{recipe.id}: {fig.title}\n{proto.split} split, {', '.join(map(str, pairs))} positive pairs, "
                 f"seed {fig.seed} | {_subtitle(rep)}", fontsize=9)
    return _save(figure, out_dir / f"{safe_name(recipe.id)}-{safe_name(fig.id)}.png")


def speed_accuracy_data(rep: TableReport, fig: Figure) -> list[tuple[Cell, float, dict[str, float], int]]:
    """Per cell of ``fig.rows`` with results: (cell, mean seconds of the protocol's test
    evaluation over its seeds, mean of each metric of ``fig.series`` (default: i2t and
    t2i R@1), parameter count). Runs that did not record the protocol's time are left out."""
    proto = fig.protocol or rep.recipe.default_protocol
    metrics = fig.series or (K.I2T_R1, K.T2I_R1)
    by_id = {c.id: c for c in rep.cells}
    out = []
    for cell in _figure_cells(rep, fig):
        docs = [d for d in (by_id[cell.id].docs if cell.id in by_id else [])
                if f"eval_{proto}_s" in d.timing and all(m in d.metrics.get(proto, {}) for m in metrics)]
        if not docs:
            continue
        seconds = float(np.mean([d.timing[f"eval_{proto}_s"] for d in docs]))
        means = {m: float(np.mean([d.metrics[proto][m] for d in docs])) for m in metrics}
        out.append((cell, seconds, means, int(docs[0].n_params or 0)))
    return out


def speed_accuracy_figure(rep: TableReport, fig: Figure, out_dir: Path) -> Path | None:
    """A declared ``speed_accuracy`` figure (ADAPT Figure 3): per metric of ``fig.series``
    (default: i2t and t2i R@1) one panel, each cell of ``fig.rows`` a marker at (seconds of
    the protocol's evaluation as its runs measured them: encoding, the whole similarity
    matrix and the ranks; metric), its area proportional to the parameter count; ``hlines``
    as dashed reference lines. None when no cell recorded its evaluation time."""
    data = speed_accuracy_data(rep, fig)
    if not data:
        return None
    recipe = rep.recipe
    proto = fig.protocol or recipe.default_protocol
    metrics = list(data[0][2])
    largest = max(n for *_, n in data) or 1
    threads = sorted({d.env.get("torch_threads") for cell, *_ in data for d in
                      next(c for c in rep.cells if c.id == cell.id).docs if d.env.get("torch_threads")})
    figure, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.5), squeeze=False, layout="constrained")
    for ax, metric in zip(axes[0], metrics):
        for cell, seconds, means, n_params in data:
            ax.scatter(seconds, means[metric], s=30 + 600 * n_params / largest, alpha=0.6, label=cell.label)
            ax.annotate(f"{n_params / 1e6:.2f}M", (seconds, means[metric]), fontsize=6, xytext=(4, 4),
                        textcoords="offset points")
        for label, value in fig.hlines.items():
            ax.axhline(value, linestyle="--", color="0.4", linewidth=1)
            ax.annotate(label, (ax.get_xlim()[0], value), fontsize=7, color="0.3", va="bottom")
        ax.set_xlabel(f"seconds to evaluate {proto} (similarity matrix and ranks)")
        ax.set_ylabel(f"{metric} ({proto})")
        ax.legend(fontsize=6)
    where = f"; torch threads {', '.join(map(str, threads))}" if threads else ""
    figure.suptitle(f"{recipe.id}: {fig.title}\nmarker area ~ parameters{where} | {_subtitle(rep)}", fontsize=9)
    return _save(figure, out_dir / f"{safe_name(recipe.id)}-{safe_name(fig.id)}.png")


#: panel titles of a ``precision_scope`` figure, as ACMR names the two directions
_DIRECTIONS = {"i2t": "Img2Txt", "t2i": "Txt2Img"}


def precision_scope_data(rep: TableReport, fig: Figure) -> dict[str, list[tuple[Cell, np.ndarray, np.ndarray]]]:
    """Per direction (``i2t``, ``t2i``): for each cell of ``fig.rows`` with results on the
    figure's label protocol, (cell, scopes K ``(P,)``, mean precision over its seeds ``(P,)``)
    from the stored keys ``i2t_p50`` ... ``t2i_p1000``. Only the K every one of the cell's
    runs recorded are kept (a K beyond the gallery is never recorded, see
    ``core/metrics/labels.py:label_metrics``); cells with none are left out."""
    proto = fig.protocol or rep.recipe.default_protocol
    by_id = {c.id: c for c in rep.cells}
    drawn: dict[str, list[tuple[Cell, np.ndarray, np.ndarray]]] = {}
    for direction in _DIRECTIONS:
        for cell in _figure_cells(rep, fig):
            docs = [d for d in (by_id[cell.id].docs if cell.id in by_id else []) if proto in d.metrics]
            scopes = [k for k in K.PRECISION_SCOPES
                      if docs and all(K.precision_key(direction, k) in d.metrics[proto] for d in docs)]
            if scopes:
                means = [float(np.mean([d.metrics[proto][K.precision_key(direction, k)] for d in docs]))
                         for k in scopes]
                drawn.setdefault(direction, []).append((cell, np.asarray(scopes), np.asarray(means)))
    return drawn


def precision_scope_figure(rep: TableReport, fig: Figure, out_dir: Path) -> Path | None:
    """A declared ``precision_scope`` figure (ACMR Figure 3): one panel per direction
    (Img2Txt, Txt2Img), one line per cell of ``fig.rows``: precision of the top K (mean
    over seeds) against the scope K = 50, 100, ..., 1000 as the label task stored it
    (:func:`precision_scope_data`). The paper's text says the scope runs from 1; its
    figure starts at 50, and so does this one. None when no cell stored precision."""
    drawn = precision_scope_data(rep, fig)
    if not drawn:
        return None
    recipe = rep.recipe
    proto = fig.protocol or recipe.default_protocol
    figure, axes = plt.subplots(1, len(drawn), figsize=(5.2 * len(drawn), 4.2), squeeze=False, sharey=True,
                                layout="constrained")
    for ax, (direction, lines) in zip(axes[0], drawn.items()):
        for cell, scopes, means in lines:
            ax.plot(scopes, means, marker="o", markersize=3, label=cell.label)
        ax.set_xlabel("scope K (top-K retrieved items)")
        ax.set_title(_DIRECTIONS[direction], fontsize=9)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(f"precision@K ({proto})")
    figure.suptitle(f"{recipe.id}: {fig.title} (mean over seeds; ties count against the query)\n{_subtitle(rep)}",
                    fontsize=9)
    return _save(figure, out_dir / f"{safe_name(recipe.id)}-{safe_name(fig.id)}.png")


def paper_figures(
    rep: TableReport, out_dir: Path, embed: Embedder | None = None, score: Scorer | None = None
) -> list[Path]:
    """The figures the recipe declares (``figures``); ``tsne`` ones need ``embed`` and
    ``cross_rank`` ones ``score``, which read the runs' stored models (without them those
    figures are skipped)."""
    made = []
    for fig in rep.recipe.figures:
        if fig.kind == "lines":
            made.append(lines_figure(rep, fig, out_dir))
        elif fig.kind == "curves":
            made.append(curves_figure(rep, fig, out_dir))
        elif fig.kind == "speed_accuracy":
            made.append(speed_accuracy_figure(rep, fig, out_dir))
        elif fig.kind == "precision_scope":
            made.append(precision_scope_figure(rep, fig, out_dir))
        elif fig.kind == "tsne" and embed is not None:
            made.append(tsne_figure(rep, fig, out_dir, embed))
        elif fig.kind == "cross_rank" and score is not None:
            made.append(cross_rank_figure(rep, fig, out_dir, score))
    return [p for p in made if p is not None]


def all_figures(
    rep: TableReport, out_dir: Path, embed: Embedder | None = None, score: Scorer | None = None
) -> list[Path]:
    """Every figure that the recipe's results support; returns the files written."""
    made = [curves(rep, out_dir), ranks(rep, out_dir), paper_vs_ours(rep, out_dir), sweep(rep, out_dir)]
    return [p for p in made if p is not None] + paper_figures(rep, out_dir, embed, score)


def figure_pngs(
    rep: TableReport, embed: Embedder | None = None, score: Scorer | None = None, *, out_dir: Path | None = None
) -> list[tuple[str, bytes]]:
    """Every figure of :func:`all_figures` as ``(file name, PNG bytes)``, for a page that
    embeds them; the files are kept in ``out_dir`` if given, else drawn in a temporary
    directory that is removed."""
    if out_dir is not None:
        return [(p.name, p.read_bytes()) for p in all_figures(rep, out_dir, embed, score)]
    import tempfile

    with tempfile.TemporaryDirectory(prefix="xmrbench-figures-") as tmp:
        return [(p.name, p.read_bytes()) for p in all_figures(rep, Path(tmp), embed, score)]
