"""Stored ``xmrbench bench`` runs as tables: one row per kernel, its time against its
floor and its peer, its memory, and whether the stated targets are met."""

from __future__ import annotations

import csv
import io
import json
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tabulate import tabulate

COLUMNS = ("kernel", "size", "seconds", "floor_seconds", "ratio_to_floor", "peer_seconds", "speedup_vs_peer",
           "peak_extra_bytes")


def _num(value: Any, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _targets(kernel: Mapping[str, Any], judged: bool) -> str:
    """``≤1.3× floor met`` style: each stated target and, at the full sizes the targets are
    stated for (``judged``), whether it was met."""
    parts = []
    for key, bound in (kernel.get("targets") or {}).items():
        met = (kernel.get("targets_met") or {}).get(key)
        mark = "" if not judged or met is None else (" met" if met else " MISSED")
        what = {"ratio_to_floor": f"≤{bound:g}× floor", "speedup_vs_peer": f"≥{bound:g}× peer",
                "peak_extra_bytes": f"≤{bound / 2**30:g} GiB"}.get(key, f"{key} {bound:g}")
        parts.append(what + mark)
    if parts and not judged:
        return "; ".join(parts) + " (judged at --full sizes)"
    return "; ".join(parts) or "–"


def kernel_table(kernels: Sequence[Mapping[str, Any]], *, fmt: str, judged: bool) -> str:
    """``kernels`` (bench documents' ``kernels`` entries) as ``text`` (80 columns),
    ``markdown`` or ``csv``; ``judged``: measured at the full sizes, where the targets hold."""
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow([*COLUMNS, "targets"])
        for k in kernels:
            writer.writerow([*(k.get(c) for c in COLUMNS), _targets(k, judged)])
        return buf.getvalue()
    rows = []
    for k in kernels:
        mib = None if k.get("peak_extra_bytes") is None else k["peak_extra_bytes"] / 2**20
        rows.append([k["kernel"], k["size"], _num(k["seconds"], ".3g"), _num(k.get("floor_seconds"), ".3g"),
                     _num(k.get("ratio_to_floor"), ".2f"), _num(k.get("speedup_vs_peer"), ".1f"), _num(mib, ".0f"),
                     _targets(k, judged)])
    if fmt == "markdown":
        head = ["kernel", "size", "s", "floor s", "× floor", "× peer", "extra MiB", "targets"]
        return tabulate(rows, head, tablefmt="github", disable_numparse=True)
    # text: the size and targets on a line of their own under each kernel, so it fits 80 columns
    head = ["kernel", "s", "floor s", "× floor", "× peer", "extra MiB"]
    lines = tabulate([r[:1] + r[2:7] for r in rows], head, tablefmt="simple", disable_numparse=True,
                     colalign=("left",) + ("right",) * 5).splitlines()
    out = lines[:2]
    for line, row in zip(lines[2:], rows):
        out += [line, *textwrap.wrap(f"{row[1]}; target {row[7]}", 80, initial_indent="    ", subsequent_indent="      ")]
    return "\n".join(out)


def render_bench(docs: Sequence[tuple[Path, Mapping[str, Any]]], *, fmt: str, latest: bool = True) -> str:
    """Stored bench runs: by default the latest of each device and size, newest last."""
    if latest:
        newest: dict[tuple[str, str], tuple[Path, Mapping[str, Any]]] = {}
        for path, doc in docs:
            env = doc.get("env") or {}
            newest[(str(env.get("device")), str(doc.get("sizes")))] = (path, doc)
        docs = sorted(newest.values(), key=lambda item: str(item[1].get("created", "")))
    if fmt == "json":
        return json.dumps([dict(doc) for _, doc in docs], indent=1)
    blocks = []
    for path, doc in docs:
        env, ceil = doc.get("env") or {}, doc.get("ceilings") or {}
        title = (f"{doc.get('created', '?')}, {doc.get('sizes', '?')} sizes, {env.get('device', '?')} "
                 f"({env.get('cpu') or env.get('machine') or '?'}, {env.get('torch_threads', '?')} threads); {path.name}")
        limits = (f"ceilings measured in the same run: GEMM {_num(ceil.get('gemm_flop_per_s'), '.3g')} FLOP/s, "
                  f"exp {_num(ceil.get('exp_per_s'), '.3g')}/s, copy {_num(ceil.get('copy_byte_per_s'), '.3g')} B/s")
        table = kernel_table(doc["kernels"], fmt="csv" if fmt == "csv" else "markdown" if fmt == "markdown" else "text",
                             judged=doc.get("sizes") == "full")
        if fmt == "csv":
            blocks.append(table)
        elif fmt == "markdown":
            blocks.append(f"### Benchmark, {title}\n\n{limits}\n\n{table}\n")
        else:
            head = [textwrap.fill(line, 80, subsequent_indent="  ") for line in (title, limits)]
            blocks.append("\n".join([*head, table, ""]))
    return "\n".join(blocks)
