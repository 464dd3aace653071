"""Registration against a real `mlflow server` process that dies mid-way: the stage retries with
backoff, then fails with a clear message, and the registry never keeps a version without its tags
and decision (a half-made version is removed; the champion is restored). Every test runs against
a server on SQLite and one on PostgreSQL (team mode's backend store)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time

import pytest

from simcse_ops import actions, registration, tracking
from simcse_ops.errors import EXIT_STORE, RegistryError
from simcse_ops.store import CHAMPION
from tests.postgres_support import fresh_database
from tests.registry_support import MlflowServer, export_st, free_port, make_project, tracking_env, write_metrics

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TASKS = ["sts12", "sts13", "sts14", "sts15", "sts16", "stsb", "sickr"]
FAST_RETRY = {"retries": 3, "backoff_s": 0.25, "backoff_max_s": 1.0, "http_timeout_s": 10}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(request, tmp_path_factory):
    """A real `mlflow server` whose backend store is SQLite or a fresh PostgreSQL database."""
    backend_uri = None
    if request.param == "postgres":
        pg = request.getfixturevalue("postgres")
        backend_uri = pg.url(fresh_database(pg, "mlflow"))
    srv = MlflowServer(tmp_path_factory.mktemp(f"mlflow-server-{request.param}"), backend_uri=backend_uri).start()
    try:
        yield srv
    finally:
        srv.kill()


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model_dir, server):
    root = tmp_path_factory.mktemp("faults-project")
    params_path = make_project(root, FAST_RETRY)
    model = export_st(tiny_model_dir, root / "models" / "tiny")
    write_metrics(root / "metrics" / "base", TASKS, 75.0)
    with tracking_env(server.url):
        from simcse_ops.config import load_params

        params = load_params(params_path)
        assert tracking.configure(root, params.mlflow) == server.url
        yield root, params, model


def _client():
    from mlflow import MlflowClient

    return MlflowClient()


def _register(project, prefix, metrics_tag, score, on_step=None):
    root, params, model = project
    p = dataclasses.replace(params, register=dataclasses.replace(params.register, model_prefix=prefix))
    mdir = write_metrics(root / "metrics" / metrics_tag, TASKS, score)
    return registration.register_variant("sup-nli", model, mdir, p, root, base_metrics_dir=root / "metrics" / "base",
                                         on_step=on_step, log=lambda m: None)


def _kill_at(server, step_name):
    def hook(step):
        if step == step_name:
            server.kill()
    return hook


def _assert_every_version_whole(name):
    for mv in _client().search_model_versions(f"name = '{name}'"):
        for key in ("sts.avg", "sts.sickr", "bias.summary", "gate.decision", "gate.reasons", "model_sha256", "run_id"):
            assert key in mv.tags, (mv.version, key)


def test_backend_uri_is_not_on_a_command_line(server):
    """The store URI (a database password for PostgreSQL) reaches the server through its
    environment: no process of the server shows it in `ps`, and its log does not hold it."""
    from pathlib import Path

    from sqlalchemy.engine import make_url

    secret = make_url(server.backend_uri).password or server.backend_uri
    group = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and os.getpgid(int(proc.name)) == server.proc.pid:
                group.append((proc / "cmdline").read_bytes().decode(errors="replace"))
        except (ProcessLookupError, FileNotFoundError, PermissionError):
            continue
    assert any("mlflow" in cmd for cmd in group)
    assert not any(secret in cmd for cmd in group)
    assert secret not in (server.folder / "server.log").read_text(errors="replace")


def test_server_dies_after_version_created(server, project):
    name = "cut-sup-nli"
    assert _register(project, "cut-", "good", 80.0)["promoted"]  # v1: champion

    t0 = time.time()
    with pytest.raises(RegistryError) as err:
        _register(project, "cut-", "better", 81.0, on_step=_kill_at(server, "aliases"))
    elapsed = time.time() - t0
    msg = str(err.value)
    assert "version 2 was created but its aliases could not be set" in msg
    assert "unreachable" in msg and "after 4 attempts" in msg and "Nothing was promoted" in msg
    assert elapsed >= 0.25 + 0.5 + 1.0  # the backoff really waited

    server.start()
    # the version that exists has all its tags and its decision, but its registration is marked
    # incomplete; the next registration removes it and restores the champion
    _assert_every_version_whole(name)
    client = _client()
    states = {str(mv.version): mv.tags["registry.state"] for mv in client.search_model_versions(f"name = '{name}'")}
    assert states == {"1": "complete", "2": "pending"}
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"

    again = _register(project, "cut-", "better", 81.0)
    assert again["version"] == 3 and again["promoted"]
    states = {str(mv.version): mv.tags["registry.state"] for mv in client.search_model_versions(f"name = '{name}'")}
    assert states == {"1": "complete", "3": "complete"}
    _assert_every_version_whole(name)
    log = actions.audit_log(client, name)
    assert [(e["alias"], e["to"]) for e in log if e["alias"] == "champion"] == [("champion", "1"), ("champion", "3")]


def test_server_dies_after_champion_moved(server, project, monkeypatch):
    """Killed between moving `champion` and marking the version complete: after restart, the
    repair restores the previous champion and removes the half-made version."""
    name = "mid-sup-nli"
    assert _register(project, "mid-", "good", 80.0)["promoted"]

    real_move = registration.move_alias  # the name registration calls

    def move_then_kill(client, n, alias, version, action, why, cfg):
        entry = real_move(client, n, alias, version, action, why, cfg)
        if alias == CHAMPION and action == "gate":
            server.kill()  # after the champion moved, before the version is marked complete
        return entry

    monkeypatch.setattr(registration, "move_alias", move_then_kill)
    with pytest.raises(RegistryError, match="version 2 was created"):
        _register(project, "mid-", "better", 81.0)
    monkeypatch.undo()
    server.start()
    client = _client()
    assert str(client.get_model_version_by_alias(name, "champion").version) == "2"  # moved, not complete
    _assert_every_version_whole(name)
    removed = actions.reconcile(client, name, project[1].mlflow, log=lambda m: None)
    assert removed == ["2"]
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    assert [str(mv.version) for mv in client.search_model_versions(f"name = '{name}'")] == ["1"]
    assert actions.audit_log(client, name)[-1]["action"] == "repair"


def test_server_dead_before_registration(server, project):
    """Killed while the model is uploaded: no version is created. (Runs last among the server
    tests; the registry is read straight from the server's backend store, no restart needed.)"""
    from mlflow import MlflowClient

    name = "early-sup-nli"
    with pytest.raises(tracking.TrackingUnavailable, match=r"could not upload \S+ after 4 attempts"):
        _register(project, "early-", "good", 80.0, on_step=_kill_at(server, "log_model"))
    store = MlflowClient(tracking_uri=server.backend_uri, registry_uri=server.backend_uri)
    assert [rm.name for rm in store.search_registered_models(f"name = '{name}'")] == [name]
    assert list(store.search_model_versions(f"name = '{name}'")) == []


def test_stage_fails_clearly_when_the_server_is_down(project, tmp_path):
    root, params, model = project
    port = free_port()  # nothing listens there
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}", "HF_HUB_OFFLINE": "1"}
    mdir = write_metrics(tmp_path / "m", TASKS, 80.0)
    t0 = time.time()
    r = subprocess.run(
        [sys.executable, "-m", "stages.register", "--variant", "sup-nli", "--params", str(root / "params.yaml"),
         "--model", str(model), "--metrics", str(mdir), "--base-metrics", str(root / "metrics" / "base"),
         "--out", str(tmp_path / "registry.json")],
        env=env, capture_output=True, text=True, timeout=300, cwd=tracking_root(),
    )
    assert r.returncode == EXIT_STORE, r.stderr[-2000:]  # TrackingUnavailable: its own status
    assert f"MLflow store http://127.0.0.1:{port} unreachable" in r.stderr
    assert "retry 3/3" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "registry.json").exists()
    assert time.time() - t0 < 120


def tracking_root():
    from pathlib import Path

    return Path(__file__).resolve().parents[2]
