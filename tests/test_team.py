"""Team mode (simcse_ops.team): the password comes from the environment, params.yaml `team` is
checked, the deployments keep flows/prefect.yaml's and go to the team pool without a secret, a
fresh clone becomes a DVC workspace, and PostgreSQL accepts only the password on loopback."""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from simcse_ops.config import ConfigError, TeamConfig, parse_params
from simcse_ops.team import Team, TeamError, prepare_run_workspace, render_team_deployments, team_password

PASSWORD_ENV = "SIMCSE_TEST_TEAM_PASSWORD"


@pytest.fixture()
def raw(project_root):
    return yaml.safe_load((project_root / "params.yaml").read_text())


# ---- the password -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, ""])
def test_team_password_unset_or_empty_names_the_variable(monkeypatch, value):
    if value is None:
        monkeypatch.delenv(PASSWORD_ENV, raising=False)
    else:
        monkeypatch.setenv(PASSWORD_ENV, value)
    with pytest.raises(TeamError, match=rf"\${PASSWORD_ENV} is not set: export {PASSWORD_ENV}="):
        team_password(TeamConfig(password_env=PASSWORD_ENV))


def test_team_password_read_from_the_environment(monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, "correct horse")
    assert team_password(TeamConfig(password_env=PASSWORD_ENV)) == "correct horse"


def test_database_url_quotes_the_password():
    """A password with URL delimiters survives the SQLAlchemy URL the servers get."""
    from sqlalchemy.engine import make_url

    from simcse_ops.team import Postgres

    password = "p@ss/w:rd%?#"
    url = make_url(Postgres(Path("/nonexistent"), "127.0.0.1", 5433, "simcse", password).url("mlflow"))
    assert (url.drivername, url.username, url.password, url.host, url.port, url.database) == (
        "postgresql+psycopg", "simcse", password, "127.0.0.1", 5433, "mlflow")


# ---- params.yaml `team` -----------------------------------------------------------------------


def test_project_team_section_loads(params):
    assert params.team.host == "127.0.0.1"
    assert params.team.password_env.isidentifier()
    assert len({params.team.postgres_port, params.team.mlflow_port, params.team.prefect_port}) == 3


@pytest.mark.parametrize("change, message", [
    ({"mlflow_port": 5433, "postgres_port": 5433}, r"p.yaml: team: postgres_port, mlflow_port and prefect_port must differ"),
    ({"prefect_port": 5000, "mlflow_port": 5000}, r"p.yaml: team: postgres_port, mlflow_port and prefect_port must differ"),
    ({"workers": 0}, r"p.yaml: team.workers: expected an integer >= 1, got 0"),
    ({"password_env": "SIMCSE-PG PASSWORD"}, r"p.yaml: team.password_env: expected the NAME of an environment"),
    ({"password_env": "$SIMCSE_PG_PASSWORD"}, r"p.yaml: team.password_env: expected the NAME of an environment"),
    ({"mlflow_port": 70000}, r"p.yaml: team.mlflow_port: expected a TCP port 1..65535, got 70000"),
], ids=["mlflow=postgres-port", "prefect=mlflow-port", "workers-0", "password_env-spaces", "password_env-dollar",
        "port-range"])
def test_check_team_rejects(raw, tmp_path, change, message):
    bad = copy.deepcopy(raw)
    bad["team"].update(change)
    with pytest.raises(ConfigError, match=message):
        parse_params(bad, tmp_path / "p.yaml")


# ---- deployments --------------------------------------------------------------------------------


@pytest.fixture()
def team(params):
    cfg = dataclasses.replace(params.team, pool="team-pool-x", branch="feature-x", repository="/srv/git/simcse.git",
                              mlflow_port=5123, password_env=PASSWORD_ENV)
    return Team(root=params.path.resolve().parent, cfg=cfg, data_root=params.data_root)


def test_render_team_deployments_keeps_flows_and_uses_the_team_pool(team, project_root, monkeypatch):
    secret = "Pg-secret-0123456789-xyz"
    monkeypatch.setenv(PASSWORD_ENV, secret)
    spec = yaml.safe_load((project_root / "flows" / "prefect.yaml").read_text(encoding="utf-8"))
    out = render_team_deployments(copy.deepcopy(spec), team)
    dump = yaml.safe_dump(out, sort_keys=False)

    assert secret not in dump
    assert "simcse-local" not in dump  # the single-workspace pool is gone
    assert out["name"] == spec["name"]
    assert [d["name"] for d in out["deployments"]] == [d["name"] for d in spec["deployments"]]
    assert out["deployments"], "flows/prefect.yaml has deployments"
    for mine, theirs in zip(out["deployments"], spec["deployments"], strict=True):
        for key in ("entrypoint", "parameters", "schedules"):
            assert mine.get(key) == theirs.get(key), (mine["name"], key)
        pool = mine["work_pool"]
        assert pool["name"] == "team-pool-x"
        assert pool["job_variables"]["env"] == {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5123"}

    steps = [next(iter(step.items())) for step in out["pull"]]
    assert steps[0] == ("prefect.deployments.steps.git_clone",
                        {"id": "clone", "repository": "/srv/git/simcse.git", "branch": "feature-x"})
    prepare = dict(steps)["simcse_ops.team.prepare_run_workspace"]
    assert prepare["directory"] == "{{ clone.directory }}"
    assert prepare["dvc_remote"] == team.dvc_remote
    assert yaml.safe_load(dump) == out  # plain YAML: no anchors left pointing at the local pool


# ---- a run's workspace ------------------------------------------------------------------------


def _git_dvc_workspace(folder: Path, data_root: str) -> Path:
    folder.mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=folder, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=folder, check=True)
    (folder / "params.yaml").write_text(yaml.safe_dump({"data": {"root": data_root}}), encoding="utf-8")
    return folder


def _dvc(args: list[str], cwd: Path) -> str:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


def test_prepare_run_workspace_remote_is_local_and_data_root_linked(tmp_path):
    ws = _git_dvc_workspace(tmp_path / "run" / "clone", "../shared/data")
    committed = (ws / ".dvc" / "config").read_text()
    remote, data = tmp_path / "remote", tmp_path / "team-data"
    data.mkdir()

    assert prepare_run_workspace(str(ws), dvc_remote=str(remote), data_root=str(data)) == {"directory": str(ws)}

    assert (ws / ".dvc" / "config").read_text() == committed  # nothing a commit would carry
    assert str(remote) in (ws / ".dvc" / "config.local").read_text()
    assert _dvc(["config", "core.remote"], ws) == "team"
    assert _dvc(["remote", "list", "--local"], ws).split()[:2] == ["team", str(remote)]
    assert _dvc(["remote", "list", "--project"], ws) == ""
    link = tmp_path / "run" / "shared" / "data"
    assert link.is_symlink() and link.resolve() == data.resolve()


def test_prepare_run_workspace_leaves_an_existing_or_absolute_data_root(tmp_path):
    data = tmp_path / "team-data"
    data.mkdir()
    # relative and present: kept as it is
    ws = tmp_path / "a" / "clone"
    ws.mkdir(parents=True)
    (ws / "params.yaml").write_text(yaml.safe_dump({"data": {"root": "../shared/data"}}), encoding="utf-8")
    present = tmp_path / "a" / "shared" / "data"
    present.mkdir(parents=True)
    prepare_run_workspace(str(ws), data_root=str(data))
    assert present.is_dir() and not present.is_symlink()
    # absolute: never created, even when missing
    ws = tmp_path / "b" / "clone"
    ws.mkdir(parents=True)
    absent = tmp_path / "b" / "elsewhere" / "data"
    (ws / "params.yaml").write_text(yaml.safe_dump({"data": {"root": str(absent)}}), encoding="utf-8")
    prepare_run_workspace(str(ws), data_root=str(data))
    assert not absent.exists() and not absent.is_symlink() and not absent.parent.exists()
    assert not (ws / ".dvc").exists()  # no remote asked for: DVC untouched


# ---- PostgreSQL ---------------------------------------------------------------------------------


@pytest.mark.integration
def test_postgres_password_only_on_loopback():
    """A real cluster: no `trust` in pg_hba.conf, the right password connects, a wrong one is
    refused, and the server listens on 127.0.0.1 only."""
    import psycopg

    from tests.postgres_support import running_postgres

    with running_postgres() as pg:
        hba = [line.split() for line in (pg.data_dir / "pg_hba.conf").read_text().splitlines()
               if line.strip() and not line.lstrip().startswith("#")]
        assert hba and all(fields[-1] == "scram-sha-256" for fields in hba)
        assert not any("trust" in fields for fields in hba)

        with pg.connect() as conn:
            assert conn.execute("SELECT current_user").fetchone()[0] == pg.user
            assert conn.execute("SHOW listen_addresses").fetchone()[0] == "127.0.0.1"
            assert conn.execute("SHOW password_encryption").fetchone()[0] == "scram-sha-256"
            assert conn.execute("SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid "
                                "WHERE rolname = current_user").fetchone()[0]
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            dataclasses.replace(pg, password=pg.password + "x").connect()
        with pytest.raises(psycopg.OperationalError, match="no password supplied|password authentication failed"):
            dataclasses.replace(pg, password="").connect()
        pg.create_databases(["mlflow", "mlflow"])  # idempotent
        with pg.connect("mlflow") as conn:
            assert conn.execute("SELECT current_database()").fetchone()[0] == "mlflow"
        assert pg.running()
    assert not pg.data_dir.exists()


def test_down_never_signals_a_process_that_reused_a_recorded_pid(tmp_path):
    """A pid file whose process is gone and whose pid now belongs to another process (here: this
    test's own) is stale: `team down` removes it and signals nothing."""
    import os
    import subprocess
    import sys

    from simcse_ops.team import _alive, _start_time, _stop

    stale = tmp_path / "mlflow.pid"
    stale.write_text(f"{os.getpid()} 1\n")  # our pid, another start time
    assert not _alive(stale)
    assert _stop(stale) is False and not stale.exists()  # and we are still here

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    live = tmp_path / "worker-1.pid"
    live.write_text(f"{child.pid} {_start_time(child.pid)}\n")
    assert _alive(live)
    assert _stop(live) is True and not live.exists()
    child.wait(timeout=5)
    assert _start_time(child.pid) == ""  # gone (and reaped)
