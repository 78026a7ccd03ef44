"""Shared fixtures: an isolated cache and recipes directory, and a toy dataset; a line in
the terminal summary when the paper-text checks were skipped."""

from __future__ import annotations

import os

# One OpenMP/torch thread per test process, set before anything imports torch: the suite
# runs one pytest-xdist worker per CPU (pyproject.toml), and tiny models gain nothing from
# a second thread. Children inherit it; tests of the thread policy set their own.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

from papers import SKIP_PREFIX
from toy import toy_data


def pytest_terminal_summary(terminalreporter):
    """Say once that the paper-text checks did not run, and why (see ``papers.py``)."""
    reasons = [
        str(report.longrepr[2]).split(SKIP_PREFIX, 1)[1]
        for report in terminalreporter.stats.get("skipped", [])
        if isinstance(report.longrepr, tuple) and SKIP_PREFIX in str(report.longrepr[2])
    ]
    if reasons:
        terminalreporter.write_line(f"{SKIP_PREFIX}{reasons[0]} ({len(reasons)} tests)", yellow=True, bold=True)


def pytest_collection_modifyitems(items):
    """Files with more tests marked ``slow`` first (a stable sort, the same in every
    worker): the suite's workers take a file at a time, and cheap files at the end fill
    the gaps instead of one worker finishing a long file alone."""
    def file(item) -> str:
        return item.nodeid.split("::")[0]

    slow: dict[str, int] = {}
    for item in items:
        slow[file(item)] = slow.get(file(item), 0) + (item.get_closest_marker("slow") is not None)
    items.sort(key=lambda item: -slow[file(item)])


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Generated worlds go to a temporary cache shared by the test run, never to the user's home."""
    cache = tmp_path_factory.getbasetemp() / "xmrbench-cache"
    monkeypatch.setenv("XMRBENCH_CACHE", str(cache))


@pytest.fixture
def toy():
    return toy_data()


@pytest.fixture
def one_thread():
    """One torch thread: on a shared machine, spinning OpenMP threads make small runs several times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
