"""Shared fixtures: an isolated cache and recipes directory, and a toy dataset."""

from __future__ import annotations

import pytest

from toy import toy_data

@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Generated worlds go to a per-session temporary cache, never to the user's home."""
    cache = tmp_path_factory.getbasetemp() / "xmrbench-cache"
    monkeypatch.setenv("XMRBENCH_CACHE", str(cache))


@pytest.fixture
def toy():
    return toy_data()
