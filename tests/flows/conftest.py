"""One temporary Prefect server (SQLite) for the flow tests of this session: it takes ~20 s to start."""

from __future__ import annotations

import pytest
from prefect.artifacts import Artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.logging.handlers import APILogHandler
from prefect.testing.utilities import prefect_test_harness


@pytest.fixture(scope="session")
def prefect_server():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def flow_run_logs(flow_run_id) -> list[str]:
    """Every log message of a flow run and its task runs, from the Prefect server."""
    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [log.message for log in logs]


def read_artifact(key: str):
    return Artifact.get(key)
