"""Where the paper texts are, for the tests that check recipe numbers against them.

The directory is ``$XMRBENCH_PAPERS`` when set, else ``DEFAULT``. Where it holds no
``*.md`` text, the
tests that need it skip with that reason, or fail when ``XMRBENCH_REQUIRE_PAPERS=1``
(CI sets it, so that the checks cannot vanish unnoticed).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pytest

DIR_VAR = "XMRBENCH_PAPERS"
REQUIRE_VAR = "XMRBENCH_REQUIRE_PAPERS"
DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "papers"
SKIP_PREFIX = "paper-text checks skipped: "


def papers_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """The directory looked at: ``$XMRBENCH_PAPERS``, else ``DEFAULT``."""
    return Path(environ.get(DIR_VAR) or DEFAULT)


def missing(path: Path) -> str | None:
    """Why ``path`` cannot serve as the paper texts (no directory, no ``*.md`` in it), or None."""
    if not path.is_dir():
        return f"no paper texts at {path} (set {DIR_VAR}=DIR)"
    if not any(path.glob("*.md")):
        return f"no paper texts (*.md) in {path} (set {DIR_VAR}=DIR)"
    return None


def require_papers(environ: Mapping[str, str] = os.environ) -> Path:
    """The paper-text directory. Where it is missing: ``pytest.fail`` when
    ``XMRBENCH_REQUIRE_PAPERS=1``, else ``pytest.skip`` with the reason."""
    path = papers_dir(environ)
    reason = missing(path)
    if reason is None:
        return path
    if environ.get(REQUIRE_VAR) == "1":
        pytest.fail(f"{reason}; {REQUIRE_VAR}=1 requires the paper texts", pytrace=False)
    pytest.skip(SKIP_PREFIX + reason)
