"""The paper-text checks cannot vanish unnoticed: where the texts are missing they skip
with the path looked at, fail under ``XMRBENCH_REQUIRE_PAPERS=1``, and a run says so
once in its terminal summary."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from papers import DEFAULT, SKIP_PREFIX, papers_dir, require_papers

REPO = Path(__file__).resolve().parents[1]


def test_the_directory_is_the_variable_or_the_default(tmp_path):
    assert papers_dir({"XMRBENCH_PAPERS": str(tmp_path)}) == tmp_path
    assert papers_dir({}) == papers_dir({"XMRBENCH_PAPERS": ""}) == DEFAULT


def test_texts_present_give_the_directory(tmp_path):
    (tmp_path / "a3vse.md").write_text("Table 1 | 1.0 2.0\n")
    assert require_papers({"XMRBENCH_PAPERS": str(tmp_path), "XMRBENCH_REQUIRE_PAPERS": "1"}) == tmp_path


@pytest.mark.parametrize("make", ["absent", "empty"])
def test_missing_texts_skip_with_the_path(tmp_path, make):
    where = tmp_path / "papers"
    if make == "empty":
        where.mkdir()
    with pytest.raises(pytest.skip.Exception) as info:
        require_papers({"XMRBENCH_PAPERS": str(where)})
    assert str(info.value).startswith(SKIP_PREFIX)
    assert str(where) in str(info.value) and "XMRBENCH_PAPERS=DIR" in str(info.value)


@pytest.mark.parametrize("require", ["", "0"])
def test_only_require_papers_1_turns_the_skip_into_a_failure(tmp_path, require):
    with pytest.raises(pytest.skip.Exception):
        require_papers({"XMRBENCH_PAPERS": str(tmp_path / "none"), "XMRBENCH_REQUIRE_PAPERS": require})


def test_missing_texts_fail_when_required(tmp_path):
    where = tmp_path / "none"
    with pytest.raises(pytest.fail.Exception) as info:
        require_papers({"XMRBENCH_PAPERS": str(where), "XMRBENCH_REQUIRE_PAPERS": "1"})
    message = str(info.value)
    assert str(where) in message and "XMRBENCH_PAPERS=DIR" in message and "XMRBENCH_REQUIRE_PAPERS=1" in message


def _pytest(tmp_path, **env):
    """``pytest tests/test_recipe_numbers.py`` in a subprocess with ``env`` added."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "tests/test_recipe_numbers.py"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "XMRBENCH_CACHE": str(tmp_path / "cache"), **env},
    )
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.slow
def test_a_run_without_the_texts_says_so_once_and_fails_when_required(tmp_path):
    where = tmp_path / "nowhere"
    code, out = _pytest(tmp_path, XMRBENCH_PAPERS=str(where), XMRBENCH_REQUIRE_PAPERS="")
    assert code == 0, out
    assert out.count(SKIP_PREFIX) == 1 and f"no paper texts at {where} (set XMRBENCH_PAPERS=DIR)" in out
    code, out = _pytest(tmp_path, XMRBENCH_PAPERS=str(where), XMRBENCH_REQUIRE_PAPERS="1")
    assert code == 1 and "1 failed" in out, out
    assert f"no paper texts at {where}" in out and SKIP_PREFIX not in out
