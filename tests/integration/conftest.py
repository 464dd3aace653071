"""Fixtures of the integration tests that start real servers."""

from __future__ import annotations

import pytest

from tests.postgres_support import running_postgres


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL cluster (simcse_ops.team.Postgres), one per session; each user makes
    its own database (tests.postgres_support.fresh_database)."""
    with running_postgres() as pg:
        yield pg
