"""A real PostgreSQL cluster for the tests (`simcse_ops.team.Postgres`): a folder under /tmp
that the `postgres` system user can reach (pytest's tmp_path is private to root), a free port on
127.0.0.1, a random password, scram-sha-256 only."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from simcse_ops.team import Postgres
from tests.registry_support import free_port


@contextmanager
def running_postgres(user: str = "simcse") -> Iterator[Postgres]:
    """initdb + start a cluster; stop it and remove its folder afterwards."""
    home = Path(tempfile.mkdtemp(prefix="simcse-pg-test-", dir="/tmp"))
    os.chmod(home, 0o711)  # the server runs as `postgres` and must pass through this folder
    pg = Postgres(home / "data", "127.0.0.1", free_port(), user, secrets.token_urlsafe(24))
    try:
        pg.init()
        pg.start()
        yield pg
    finally:
        try:
            pg.stop()
        finally:
            shutil.rmtree(home, ignore_errors=True)


def fresh_database(pg: Postgres, prefix: str) -> str:
    """Create an empty database with a random name; return its name."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    pg.create_databases([name])
    return name
