"""Where generated data is cached, and how a cache entry is built safely.

The cache root is ``$XMRBENCH_CACHE`` when set (and not empty), else
``~/.cache/xmrbench``. An entry is a directory that is complete exactly when it holds
its marker file (``.complete``, hidden so that dataset fingerprints ignore it).

:func:`materialize` builds an entry at most once, even with several processes racing:
each builder writes into its own temporary sibling directory, writes the marker last,
and renames the directory into place; whoever renames first wins and the others use
the winner's entry. A directory found without its marker (a crash, a copy cut short,
a hand edit) is moved aside and rebuilt.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from xmrbench.errors import DataError

CACHE_ENV = "XMRBENCH_CACHE"
MARKER = ".complete"
_MAX_ATTEMPTS = 3


def cache_root() -> Path:
    """The cache root: ``$XMRBENCH_CACHE`` if set, else ``~/.cache/xmrbench``."""
    value = os.environ.get(CACHE_ENV, "").strip()
    return Path(value).expanduser() if value else Path.home() / ".cache" / "xmrbench"


def is_complete(path: Path) -> bool:
    """Whether the cache entry ``path`` exists and holds its completion marker."""
    return (path / MARKER).is_file()


def _discard(path: Path) -> None:
    """Move an incomplete entry aside (atomic), then delete it."""
    trash = path.with_name(f".{path.name}.stale-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        return  # someone else already moved it
    shutil.rmtree(trash, ignore_errors=True)


def materialize(
    dest: str | os.PathLike, build: Callable[[Path], None], *, meta: Mapping[str, Any] | None = None
) -> Path:
    """Return the complete cache entry ``dest``, calling ``build(tmp_dir)`` if it is missing.

    ``build`` fills the empty directory it is given; ``meta`` (JSON-able) is written into
    the marker. Raises ``DataError`` if the entry cannot be created.
    """
    dest = Path(dest)
    for _ in range(_MAX_ATTEMPTS):
        if is_complete(dest):
            return dest
        if dest.exists():
            _discard(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
        tmp.mkdir()
        try:
            build(tmp)
            marker = json.dumps(dict(meta or {}), sort_keys=True, indent=1) + "\n"
            (tmp / MARKER).write_text(marker, encoding="utf-8")
            try:
                os.rename(tmp, dest)
                return dest
            except OSError:
                if not dest.exists():
                    raise
                # another process renamed its copy first: use theirs if it is complete
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    if is_complete(dest):
        return dest
    raise DataError(f"could not create the cache entry after {_MAX_ATTEMPTS} attempts", where=str(dest))
