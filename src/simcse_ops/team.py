"""Team mode: one registry, one orchestrator, one DVC remote, a fresh workspace per run.

`simcse-ops team up` starts, on this machine and bound to `team.host` (127.0.0.1):

    PostgreSQL       a cluster in <home>/postgres (Debian's server binaries, started with pg_ctl),
                     password authentication only (scram-sha-256; no `trust` line in pg_hba.conf),
                     databases `mlflow` and `prefect`, owned by `team.user`
    mlflow server    backend store = the `mlflow` database, artifacts proxied by the server
                     (--serve-artifacts) into <home>/mlflow-artifacts, with its host and CORS
                     restrictions (--allowed-hosts, --cors-allowed-origins: this address only)
    Prefect server   on the `prefect` database (PREFECT_API_DATABASE_CONNECTION_URL)
    work pool        `team.pool`, type process, concurrency limit `team.workers`, and that many
                     `prefect worker` processes
    DVC remote       <home>/dvc-remote (a local folder; S3 / GCS / SSH in production)
    git repository   <home>/repo.git, a bare repository HEAD is pushed to; the deployments clone it

then deploys flows/prefect.yaml's deployments to the pool with a pull step that clones the
repository into the run's own temporary folder (`prefect.deployments.steps.git_clone`), installs
the page libraries from npm's cache and `prepare_run_workspace`s it (the DVC remote, the data
root). Two runs therefore share no folder, no lock and no DVC cache; what they share goes
through the remote (`dvc pull` / `dvc push` in the flows) and the registry.

The password is read from the environment variable `team.password_env` and handed to the
servers through their environment only (never a command line, a file of the project, a
deployment or a log line). `simcse-ops team down` stops everything `up` started.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import yaml

from simcse_ops.config import Params, TeamConfig
from simcse_ops.errors import EXIT_TEAM, UserError

POSTGRES_SYSTEM_USER = "postgres"  # PostgreSQL refuses to run as root: Debian's package user
DATABASES = ("mlflow", "prefect")
PREFECT_FILE = Path("flows") / "prefect.yaml"
Log = Callable[[str], None]


class TeamError(UserError, RuntimeError):
    """The stack could not be started or stopped (a server that does not answer, PostgreSQL not
    installed, the password variable unset); the message says what to do. Exit 5 (errors.py), not
    a ConfigError: params.yaml may be right and the machine wrong."""

    exit_status = EXIT_TEAM


def team_password(cfg: TeamConfig) -> str:
    """The database password, from the environment variable `team.password_env`."""
    value = os.environ.get(cfg.password_env, "")
    if not value:
        raise TeamError(f"${cfg.password_env} is not set: export {cfg.password_env}=<a password of your own> "
                        f"(params.yaml team.password_env names the variable; the password is never stored "
                        f"in the project)")
    return value


# --------------------------------------------------------------------------------------------
# PostgreSQL


def postgres_bindir() -> Path:
    """The newest `/usr/lib/postgresql/<major>/bin` holding initdb (Debian's layout), else the
    folder of `pg_ctl` on PATH."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if found:
        return found[-1].parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    raise TeamError("PostgreSQL's server programs (initdb, pg_ctl) are not installed: "
                    "apt-get install postgresql (Debian/Ubuntu)")


@dataclass
class Postgres:
    """A PostgreSQL cluster in `data_dir`, listening on host:port only, password auth only.

    Started and stopped with pg_ctl; its socket lives in the data folder (no /var/run needed).
    As root, the server runs as the `postgres` system user (PostgreSQL refuses root), which must
    be able to reach `data_dir`.
    """

    data_dir: Path
    host: str
    port: int
    user: str
    password: str

    def _as_server_user(self) -> list[str]:
        return ["runuser", "-u", POSTGRES_SYSTEM_USER, "--"] if os.geteuid() == 0 else []

    def _run(self, args: Sequence[str], what: str, timeout: float = 120) -> str:
        cmd = [*self._as_server_user(), *args]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd="/")
        if res.returncode != 0:
            raise TeamError(f"PostgreSQL {what} failed ({' '.join(args[:1])} exit {res.returncode}): "
                            f"{(res.stderr or res.stdout).strip()[-1500:]}")
        return res.stdout

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / "postgres.log"

    def url(self, database: str, driver: str = "postgresql+psycopg") -> str:
        """SQLAlchemy URL of `database` (holds the password: pass it through the environment)."""
        return (f"{driver}://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
                f"@{self.host}:{self.port}/{database}")

    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    def init(self) -> None:
        """initdb with scram-sha-256 for local and host connections; listen on host:port only."""
        bindir = postgres_bindir()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            _check_reachable(self.data_dir, POSTGRES_SYSTEM_USER)
        _give_to_server_user(self.data_dir)
        os.chmod(self.data_dir, 0o700)
        fd, pwfile = tempfile.mkstemp(prefix="simcse-pg-", dir="/tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(self.password + "\n")
            _give_to_server_user(Path(pwfile))
            self._run([str(bindir / "initdb"), "-D", str(self.data_dir), "-U", self.user, f"--pwfile={pwfile}",
                       "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "-E", "UTF8",
                       "--no-instructions"], "initdb")
        finally:
            os.unlink(pwfile)
        conf = self.data_dir / "postgresql.conf"
        with conf.open("a", encoding="utf-8") as f:
            f.write("\n# simcse-ops team mode (simcse_ops.team)\n"
                    f"listen_addresses = '{self.host}'\nport = {self.port}\n"
                    f"unix_socket_directories = '{self.data_dir}'\n"
                    "password_encryption = 'scram-sha-256'\n")
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text("# simcse-ops team mode: password (scram-sha-256) only, loopback only\n"
                       "local all all scram-sha-256\n"
                       f"host all all {self.host}/32 scram-sha-256\n", encoding="utf-8")

    def start(self) -> None:
        bindir = postgres_bindir()
        self.log_file.touch()
        _give_to_server_user(self.log_file)
        self._run([str(bindir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file), "-w",
                   "-t", "60", "start"], "start")

    def running(self) -> bool:
        bindir = postgres_bindir()
        res = subprocess.run([*self._as_server_user(), str(bindir / "pg_ctl"), "-D", str(self.data_dir),
                              "status"], capture_output=True, text=True, cwd="/")
        return res.returncode == 0

    def stop(self) -> None:
        if self.initialised() and self.running():
            self._run([str(postgres_bindir() / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w",
                       "stop"], "stop")

    def connect(self, database: str = "postgres"):
        import psycopg  # lazy: only team mode needs the driver

        return psycopg.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                               dbname=database, connect_timeout=10, autocommit=True)

    def create_databases(self, names: Sequence[str]) -> None:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                for name in names:
                    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                    if cur.fetchone() is None:
                        cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()


def _give_to_server_user(path: Path) -> None:
    """As root, make `path` the `postgres` system user's (the server runs as it); else a no-op."""
    if os.geteuid() == 0:
        pg = pwd.getpwnam(POSTGRES_SYSTEM_USER)
        os.chown(path, pg.pw_uid, pg.pw_gid)


def _check_reachable(path: Path, user: str) -> None:
    """Every folder above `path` must let `user` (not the owner) pass: PostgreSQL runs as it."""
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            raise TeamError(f"{path}: the PostgreSQL server runs as the system user {user!r}, which cannot "
                            f"enter {parent} (mode {oct(mode & 0o777)}); put team.home somewhere it can reach "
                            f"(e.g. under /srv or /tmp) or `chmod o+x {parent}`")


# --------------------------------------------------------------------------------------------
# The stack


@dataclass(frozen=True)
class TeamPaths:
    home: Path

    @property
    def postgres(self) -> Path:
        return self.home / "postgres" / "data"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def pids(self) -> Path:
        return self.home / "pids"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.home / "mlflow-artifacts"

    @property
    def prefect_home(self) -> Path:
        return self.home / "prefect"

    @property
    def dvc_remote(self) -> Path:
        return self.home / "dvc-remote"

    @property
    def repository(self) -> Path:
        return self.home / "repo.git"

    @property
    def deployments(self) -> Path:
        return self.home / "prefect-team.yaml"


@dataclass(frozen=True)
class Team:
    """The team stack of one project (`params.yaml` `team`)."""

    root: Path  # the project checkout `team up` runs in
    cfg: TeamConfig
    data_root: Path

    @classmethod
    def of(cls, params: Params) -> Team:
        return cls(root=params.path.resolve().parent, cfg=params.team, data_root=params.data_root)

    @property
    def paths(self) -> TeamPaths:
        home = Path(self.cfg.home)
        return TeamPaths(home if home.is_absolute() else (self.root / home).resolve())

    @property
    def mlflow_url(self) -> str:
        return f"http://{self.cfg.host}:{self.cfg.mlflow_port}"

    @property
    def prefect_api(self) -> str:
        return f"http://{self.cfg.host}:{self.cfg.prefect_port}/api"

    @property
    def dvc_remote(self) -> str:
        return self.cfg.dvc_remote or str(self.paths.dvc_remote)

    @property
    def repository(self) -> str:
        return self.cfg.repository or str(self.paths.repository)

    def postgres(self, password: str) -> Postgres:
        return Postgres(self.paths.postgres, self.cfg.host, self.cfg.postgres_port, self.cfg.user, password)

    def client_env(self) -> dict[str, str]:
        """What a client of the stack needs (no secret): the Prefect API and the MLflow server."""
        return {"PREFECT_API_URL": self.prefect_api, "MLFLOW_TRACKING_URI": self.mlflow_url}

    def _base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PREFECT_", "MLFLOW_")) and k != self.cfg.password_env}
        return {**env, "PREFECT_HOME": str(self.paths.prefect_home),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **self.client_env()}

    # ---- processes ----------------------------------------------------------------------

    def _start(self, name: str, cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> int:
        self.paths.logs.mkdir(parents=True, exist_ok=True)
        self.paths.pids.mkdir(parents=True, exist_ok=True)
        pid_file = self.paths.pids / f"{name}.pid"
        if _alive(pid_file):
            return _read_pid(pid_file)[0]
        with (self.paths.logs / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(cmd, env=env, cwd=cwd or self.root, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        # the start time too: a pid the kernel reused later for another process is not ours to stop
        pid_file.write_text(f"{proc.pid} {_start_time(proc.pid)}\n")
        _STARTED[proc.pid] = proc
        return proc.pid

    def _wait_http(self, name: str, url: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        pid_file = self.paths.pids / f"{name}.pid"
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if not _alive(pid_file):
                break
            time.sleep(1)
        raise TeamError(f"{name} did not answer {url} within {timeout_s:.0f} s; its log: "
                        f"{self.paths.logs / (name + '.log')}:\n{_tail(self.paths.logs / (name + '.log'))}")

    def start_mlflow(self, pg: Postgres, workers: int = 2) -> None:
        host, port = self.cfg.host, self.cfg.mlflow_port
        env = {**self._base_env(), "MLFLOW_BACKEND_STORE_URI": pg.url("mlflow")}
        env.pop("MLFLOW_TRACKING_URI")
        self.paths.mlflow_artifacts.mkdir(parents=True, exist_ok=True)
        self._start("mlflow", [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port),
                               "--serve-artifacts", "--artifacts-destination", str(self.paths.mlflow_artifacts),
                               "--workers", str(workers),
                               "--allowed-hosts", f"{host}:{port},localhost:{port}",
                               "--cors-allowed-origins", f"http://{host}:{port},http://localhost:{port}"], env)
        self._wait_http("mlflow", f"{self.mlflow_url}/health", 180)

    def start_prefect(self, pg: Postgres, ui: bool = True) -> None:
        env = {**self._base_env(), "PREFECT_API_DATABASE_CONNECTION_URL": pg.url("prefect", "postgresql+asyncpg"),
               "PREFECT_UI_ENABLED": "true" if ui else "false"}
        self._start("prefect-server", [sys.executable, "-m", "prefect", "server", "start", "--host", self.cfg.host,
                                       "--port", str(self.cfg.prefect_port)], env)
        self._wait_http("prefect-server", f"{self.prefect_api}/health", 180)

    def prefect(self, *args: str, cwd: Path | None = None) -> str:
        """Run the Prefect CLI against the team server."""
        res = subprocess.run([sys.executable, "-m", "prefect", *args], env=self._base_env(), cwd=cwd or self.root,
                             capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            raise TeamError(f"prefect {' '.join(args)} failed (exit {res.returncode}):\n"
                            f"{(res.stdout + res.stderr).strip()[-2000:]}")
        return res.stdout

    def start_workers(self, n: int) -> None:
        for i in range(n):
            self._start(f"worker-{i + 1}", [sys.executable, "-m", "prefect", "worker", "start", "--pool",
                                             self.cfg.pool, "--name", f"{self.cfg.pool}-{i + 1}", "--limit", "1"],
                        {**self._base_env(), "PREFECT_WORKER_QUERY_SECONDS": "2"}, cwd=self.paths.home)

    # ---- shared data and code -----------------------------------------------------------

    def publish_repository(self) -> None:
        """Create the bare repository (when team.repository is not set) and push HEAD to its
        `team.branch` (a fast-forward; a diverged branch is refused by git)."""
        if self.cfg.repository is None and not (self.paths.repository / "HEAD").is_file():
            _git(["init", "-q", "--bare", str(self.paths.repository)], self.root)
            _git(["symbolic-ref", "HEAD", f"refs/heads/{self.cfg.branch}"], self.paths.repository)
        if self.cfg.repository is None:
            _git(["push", "-q", str(self.paths.repository), f"HEAD:refs/heads/{self.cfg.branch}"], self.root)

    def deployments_file(self) -> Path:
        """flows/prefect.yaml's deployments (same names, parameters and schedules), sent to the team
        pool, each run cloning the repository into its own folder."""
        spec = yaml.safe_load((self.root / PREFECT_FILE).read_text(encoding="utf-8"))
        spec = render_team_deployments(spec, self)
        path = self.paths.deployments
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("# written by `simcse-ops team up` from flows/prefect.yaml; do not edit\n"
                        + yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
        return path

    # ---- up / down / status -------------------------------------------------------------

    def up(self, workers: int | None = None, log: Log = print, ui: bool = True) -> None:
        """Start (or complete) the stack; idempotent."""
        password = team_password(self.cfg)
        n = workers or self.cfg.workers
        pg = self.postgres(password)
        if not pg.initialised():
            log(f"postgres: initdb {pg.data_dir} (scram-sha-256, {self.cfg.host}:{self.cfg.postgres_port})")
            pg.init()
        if not pg.running():
            pg.start()
        pg.create_databases(DATABASES)
        log(f"postgres: {self.cfg.host}:{self.cfg.postgres_port}, databases {', '.join(DATABASES)}")
        self.start_mlflow(pg)
        log(f"mlflow server: {self.mlflow_url} (artifacts proxied to {self.paths.mlflow_artifacts})")
        self.start_prefect(pg, ui=ui)
        log(f"prefect server: {self.prefect_api}")
        self.prefect("work-pool", "create", self.cfg.pool, "--type", "process", "--overwrite")
        self.prefect("work-pool", "set-concurrency-limit", self.cfg.pool, str(n))
        if "://" not in self.dvc_remote:  # a local folder (s3://, ssh://, ... exist already)
            Path(self.dvc_remote).mkdir(parents=True, exist_ok=True)
        self.publish_repository()
        self.prefect("deploy", "--all", "--no-prompt", "--prefect-file", str(self.deployments_file()))
        log(f"deployments: flows/prefect.yaml's, on pool {self.cfg.pool}, cloning {self.repository} "
            f"({self.cfg.branch}); DVC remote {self.dvc_remote}")
        self.start_workers(n)
        log(f"workers: {n} on pool {self.cfg.pool} (concurrency limit {n})")
        log("use it:  " + " ".join(f"export {k}={v};" for k, v in self.client_env().items()))
        log(f"seed the remote once from a checkout with the outputs of its dvc.lock:  "
            f"dvc remote add --local --default team {self.dvc_remote} && dvc push")

    def down(self, log: Log = print) -> None:
        """Stop the workers, the servers and PostgreSQL; the data stays in team.home."""
        names = sorted((p.stem for p in self.paths.pids.glob("*.pid")), key=lambda n: (not n.startswith("worker"), n))
        for name in names:  # workers first, then the servers
            stopped = _stop(self.paths.pids / f"{name}.pid")
            log(f"{name}: {'stopped' if stopped else 'not running'}")
        if self.paths.postgres.exists():
            pg = self.postgres(os.environ.get(self.cfg.password_env, ""))
            pg.stop()
            log("postgres: stopped")

    def status(self) -> dict[str, str]:
        out = {p.stem: ("running" if _alive(p) else "stopped") for p in sorted(self.paths.pids.glob("*.pid"))}
        if self.paths.postgres.exists():
            out["postgres"] = "running" if self.postgres("").running() else "stopped"
        return out


def render_team_deployments(spec: dict, team: Team) -> dict:
    """flows/prefect.yaml with every deployment sent to the team pool and a pull step per run:
    clone the repository (git_clone) into the run's temporary folder, `npm ci` the page libraries
    from npm's cache, then `prepare_run_workspace` (DVC remote, data root). The flows find the
    registry through MLFLOW_TRACKING_URI in the deployment's environment (no secret)."""
    out = {k: v for k, v in spec.items() if k not in ("build", "push", "pull", "definitions", "deployments")}
    out["pull"] = [
        {"prefect.deployments.steps.git_clone": {"id": "clone", "repository": team.repository,
                                                 "branch": team.cfg.branch}},
        {"prefect.deployments.steps.run_shell_script": {
            "directory": "{{ clone.directory }}",
            "script": "npm ci --prefix web --offline --no-audit --no-fund --loglevel=error",
            "stream_output": False}},
        {"simcse_ops.team.prepare_run_workspace": {"directory": "{{ clone.directory }}",
                                                   "dvc_remote": team.dvc_remote,
                                                   "data_root": str(team.data_root)}},
    ]
    deployments = []
    for d in spec.get("deployments", []):
        d = {k: v for k, v in d.items() if k not in ("work_pool", "pull")}
        # two runs of one domain would register versions of the same model at once: one at a time
        d.setdefault("concurrency_limit", 1)
        d["work_pool"] = {"name": team.cfg.pool, "work_queue_name": "default",
                          "job_variables": {"env": {"MLFLOW_TRACKING_URI": team.mlflow_url}}}
        deployments.append(d)
    out["deployments"] = deployments
    return out


def prepare_run_workspace(directory: str, dvc_remote: str | None = None, data_root: str | None = None) -> dict:
    """A Prefect pull step (after git_clone): make the fresh clone a working DVC workspace.

    - `dvc_remote`: added as this clone's default remote `team` (in .dvc/config.local, never
      committed), so the flows `dvc pull` and `dvc push` through it;
    - `data_root`: when params.yaml's `data.root` is relative and does not exist beside the clone
      (../shared/data), a link to the team's data root is made there.
    Returns {"directory": directory} (Prefect changes into it before the flow starts).
    """
    ws = Path(directory).resolve()
    if dvc_remote:
        subprocess.run([sys.executable, "-m", "dvc", "remote", "add", "--local", "--default", "--force", "team",
                        dvc_remote], cwd=ws, check=True, capture_output=True)
    if data_root:
        raw = yaml.safe_load((ws / "params.yaml").read_text(encoding="utf-8"))
        rel = Path(str(raw.get("data", {}).get("root", "")))
        if rel.parts and not rel.is_absolute():
            target = ws / rel
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(Path(data_root).resolve(), target_is_directory=True)
    return {"directory": directory}


# --------------------------------------------------------------------------------------------
# helpers


def _git(args: list[str], cwd: Path) -> None:
    res = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        raise TeamError(f"git {' '.join(args)} failed in {cwd}: {res.stderr.strip()}")


_STARTED: dict[int, subprocess.Popen] = {}  # processes this process started (a dead one is reaped)


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22); "" if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def _read_pid(pid_file: Path) -> tuple[int, str]:
    pid, _, started = pid_file.read_text().strip().partition(" ")
    return int(pid), started


def _alive(pid_file: Path) -> bool:
    """The process recorded in `pid_file` still runs (same pid and the same start time)."""
    if not pid_file.is_file():
        return False
    try:
        pid, started = _read_pid(pid_file)
    except ValueError:
        return False
    if pid in _STARTED and _STARTED[pid].poll() is not None:
        return False
    return bool(started) and _start_time(pid) == started


def _stop(pid_file: Path, timeout_s: float = 30) -> bool:
    """SIGTERM the process group started with this pid (it was started in its own session), then
    SIGKILL after `timeout_s`."""
    if not _alive(pid_file):
        pid_file.unlink(missing_ok=True)
        return False
    pid = _read_pid(pid_file)[0]
    try:
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):  # our own child: reap it, or it stays a zombie
                os.waitpid(pid, os.WNOHANG)
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.5)
        else:
            os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    pid_file.unlink(missing_ok=True)
    return True


def _tail(path: Path, n: int = 30) -> str:
    if not path.is_file():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


def status_json(team: Team) -> str:
    return json.dumps({**team.status(), **team.client_env()}, indent=2)
