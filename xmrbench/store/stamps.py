"""Stamps of the files a config names, so that a stored result or training is only used
while those files are unchanged.

A config holds the paths of its files (candidate lists, word vectors, vocabularies),
not their contents, so a cell's hash does not change when a user edits one. Each run
records the size and modification time of every existing file its config names; a
stored run whose files have changed since (or gone) is stale.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any


def file_stamps(config: Any) -> dict[str, list[int]]:
    """``{path: [size, mtime_ns]}`` of every existing file named by a string of ``config``."""
    found: dict[str, list[int]] = {}

    def walk(node: Any) -> None:
        if isinstance(node, Mapping):
            for value in node.values():
                walk(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                walk(value)
        elif isinstance(node, str) and ("/" in node or "." in node):
            try:
                st = os.stat(node)
            except (OSError, ValueError):
                return
            if os.path.isfile(node):
                found[node] = [st.st_size, st.st_mtime_ns]

    walk(config)
    return found


def changed_files(recorded: Mapping[str, list[int]] | None, config: Any) -> list[str]:
    """The files whose stamps differ from ``recorded`` (those taken when the run started),
    with what changed; [] when nothing did or nothing was recorded (a run from before
    stamps were kept)."""
    if recorded is None:
        return []
    now = file_stamps(config)
    out = []
    for path in sorted(set(recorded) | set(now)):
        if path not in now:
            out.append(f"{path} is gone")
        elif path not in recorded:
            out.append(f"{path} now exists")
        elif now[path] != list(recorded[path]):
            out.append(f"{path} changed since the run")
    return out
