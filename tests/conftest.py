"""Shared fixtures: an isolated cache and recipes directory, and a toy dataset."""

from __future__ import annotations

import pytest

from toy import toy_data


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
