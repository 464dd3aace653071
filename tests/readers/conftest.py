"""Fixtures for the reader tests: each real source read once per session."""

from __future__ import annotations

import pytest

from simcse_ops.readers import load_source


@pytest.fixture(scope="session")
def real_source(params, data_root):
    """`real_source(name)` -> SourceResult of params.yaml source `name` read from the real data."""
    cache = {}

    def read(name: str):
        if name not in cache:
            cache[name] = load_source(name, params.sources[name], data_root)
        return cache[name]

    return read
