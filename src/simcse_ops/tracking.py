"""MLflow tracking: where runs go, what lineage they carry, and a small logger for training.

Where: `resolve_tracking_uri()` gives `$MLFLOW_TRACKING_URI` when set (any MLflow server), else
the embedded default, a SQLite file `mlflow/mlflow.db` beside params.yaml with artifacts in
`mlflow/artifacts/` (params.yaml `mlflow`). Nothing is resolved at import: a stage's `main()`
calls `configure()`.

What every run carries (`lineage_tags()`): the variant, the git commit (and whether the tree was
dirty), the DVC md5 of every dataset the variant's stages read (from dvc.lock) and the machine.

Training calls

    with tracking.start_run(variant, params=cfg_dict, root=project_root, cfg=mlflow_cfg) as run:
        run.log_metrics(step, loss=..., sentences_per_s=...)
        run.log_metrics(step, dev_spearman=...)
        run.tag_model(model_dir)      # tag model_sha256: the hash of the folder it wrote

(`log_training()` does all of it for a finished training), and registration attaches to the same
run with `run_for_model()`, which finds it by its tags `variant` and `model_sha256`. Nothing is
written into the model folder: retraining to the same weights gives the same folder (and the
same DVC hash), and no path of this machine ships inside a registered model.

mlflow is imported inside the functions that use it: the `simcse-ops` command line imports this
module, and `simcse-ops --help` should not take the seconds mlflow needs to load.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from simcse_ops.config import MlflowConfig
from simcse_ops.errors import EXIT_STORE, UserError
from simcse_ops.files import model_hash

TRACKING_ENV = "MLFLOW_TRACKING_URI"
# What DVC sets for a stage run by `dvc exp run` (dvc.env): the experiment's name, the commit it
# starts from, and the workspace (the stages of a queued experiment run in a copy of it).
DVC_EXP_NAME_ENV, DVC_EXP_BASELINE_ENV, DVC_ROOT_ENV = "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "DVC_ROOT"
MODEL_TAG = "model_sha256"  # a run's tag: the hash of the model folder it produced (model_hash)

T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# Where runs go


def store_root(root: Path | str) -> Path:
    """The folder the embedded store's relative paths are taken from: `root` (params.yaml's
    folder), except inside a DVC experiment, whose stages may run in a copy of the repository
    under .dvc/tmp/exps/ (`dvc queue start`): there it is the workspace DVC names in $DVC_ROOT,
    so that queued experiments are tracked in the project's own store, not in a throwaway copy."""
    if dvc_experiment() and os.environ.get(DVC_ROOT_ENV):
        return Path(os.environ[DVC_ROOT_ENV])
    return Path(root)


def resolve_tracking_uri(root: Path, cfg: MlflowConfig) -> str:
    """`$MLFLOW_TRACKING_URI` if set, else `sqlite:///<store_root>/<cfg.store>`."""
    env = os.environ.get(TRACKING_ENV)
    if env:
        return env
    return f"sqlite:///{(store_root(root) / cfg.store).resolve()}"


def artifact_root(root: Path, cfg: MlflowConfig) -> str:
    return (store_root(root) / cfg.artifacts).resolve().as_uri()


def configure(root: Path | str, cfg: MlflowConfig) -> str:
    """Point MLflow (tracking and registry) at the resolved store; create `mlflow/` for the
    embedded one. Called from `main()`, never at import. Returns the URI."""
    import mlflow  # lazy: see the module docstring

    root = store_root(root)
    uri = resolve_tracking_uri(root, cfg)
    if uri == f"sqlite:///{(root / cfg.store).resolve()}":
        (root / cfg.store).parent.mkdir(parents=True, exist_ok=True)
        (root / cfg.artifacts).mkdir(parents=True, exist_ok=True)
    # MLflow's own retries (7, factor 2) would hide a dead server for minutes; ours are bounded.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(cfg.http_timeout_s))
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def get_experiment_id(client, root: Path, cfg: MlflowConfig) -> str:
    """The experiment's id, creating it (with artifacts under `mlflow/artifacts` for the embedded
    store; the server's own artifact root otherwise)."""
    exp = retry(lambda: client.get_experiment_by_name(cfg.experiment), "look up the experiment", cfg)
    if exp is not None:
        return exp.experiment_id
    # The embedded store keeps artifacts under mlflow/artifacts; any store named by
    # $MLFLOW_TRACKING_URI (a server, another database) uses its own artifact root.
    # (mlflow.set_tracking_uri exports the variable, so compare URIs instead of reading it).
    embedded = client.tracking_uri == f"sqlite:///{(store_root(root) / cfg.store).resolve()}"
    location = artifact_root(root, cfg) if embedded else None
    try:
        return retry(
            lambda: client.create_experiment(cfg.experiment, artifact_location=location),
            "create the experiment",
            cfg,
        )
    except Exception:
        exp = client.get_experiment_by_name(cfg.experiment)  # created concurrently by another stage
        if exp is None:
            raise
        return exp.experiment_id


# --------------------------------------------------------------------------------------------
# Retries


class TrackingUnavailable(UserError, RuntimeError):
    """The tracking/registry store could not be reached after all retries; the message names the
    store and how to start it. Exit 4 (errors.py)."""

    exit_status = EXIT_STORE


def is_connection_error(exc: BaseException) -> bool:
    """True for errors a retry can cure: refused/reset connections, timeouts, a locked SQLite file.

    MLflow wraps `requests` errors in `MlflowException("API request to ... failed with exception
    ...")`, so the whole cause/context chain is inspected.
    """
    import requests  # lazy: only when an error is inspected

    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                          ConnectionError, TimeoutError)):
            return True
        text = str(e)
        if any(s in text for s in ("Connection refused", "Max retries exceeded", "Connection reset",
                                   "Connection aborted", "RemoteDisconnected", "database is locked",
                                   "failed with timeout exception")):
            return True
        e = e.__cause__ or e.__context__
    return False


def retry(
    fn: Callable[[], T],
    what: str,
    cfg: MlflowConfig,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] | None = None,
) -> T:
    """Call `fn`; on a connection error wait backoff_s * 2**k (capped) and try again, `cfg.retries`
    times; then raise `TrackingUnavailable` naming the operation and the store. Other errors pass
    through untouched."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    attempts = cfg.retries + 1
    for k in range(attempts):
        try:
            return fn()
        except Exception as e:
            if not is_connection_error(e):
                raise
            if k == attempts - 1:
                import mlflow  # lazy: see the module docstring

                raise TrackingUnavailable(
                    f"MLflow store {mlflow.get_tracking_uri()} unreachable: could not {what} after "
                    f"{attempts} attempts with exponential backoff ({first_line(e)}). Start the "
                    f"server (see README 'Registry') or unset {TRACKING_ENV} to use the embedded "
                    f"store, then rerun; params.yaml mlflow.retries/backoff_s tune the patience."
                ) from e
            wait = min(cfg.backoff_s * 2**k, cfg.backoff_max_s)
            log(f"mlflow: {what} failed ({first_line(e)}); retry {k + 1}/{cfg.retries} in {wait:.1f}s")
            sleep(wait)
    raise AssertionError("unreachable")


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


# --------------------------------------------------------------------------------------------
# Lineage and system info


def dvc_experiment() -> dict[str, str]:
    """Inside `dvc exp run` (DVC sets $DVC_EXP_NAME and $DVC_EXP_BASELINE_REV for each stage):
    {"dvc.exp_name": ..., "dvc.exp_baseline_rev": ...}, the tags every run of it carries; else {}."""
    name, base = os.environ.get(DVC_EXP_NAME_ENV), os.environ.get(DVC_EXP_BASELINE_ENV)
    if not (name or base):
        return {}
    return {"dvc.exp_name": name or "unnamed", "dvc.exp_baseline_rev": base or "unknown"}


def _git(root: Path, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else ""


def pipeline_outputs(root: Path) -> list[str]:
    """The paths dvc.lock records as stage outputs (metrics, models, ...), relative to `root`."""
    lock = Path(root) / "dvc.lock"
    if not lock.is_file():
        return []
    doc = yaml.safe_load(lock.read_text(encoding="utf-8")) or {}
    return sorted({o["path"] for body in (doc.get("stages") or {}).values() for o in body.get("outs") or []
                   if o.get("path")})


def uncommitted_inputs(root: Path) -> list[str]:
    """Files git tracks that differ from HEAD, other than what the pipeline itself writes
    (dvc.lock and the stage outputs it records): the code, params.yaml, dvc.yaml or .dvc files a
    model was made from but that no commit holds. Empty outside a git checkout."""
    out = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "-z", "--untracked-files=no",
                          "--no-renames"], capture_output=True, text=True)
    if out.returncode != 0:
        return []
    outs = pipeline_outputs(root)

    def written(path: str) -> bool:
        return path == "dvc.lock" or any(path == o or path.startswith(o.rstrip("/") + "/") for o in outs)

    paths = [entry[3:] for entry in out.stdout.split("\0") if len(entry) > 3]  # "XY path"
    return sorted(p for p in paths if not written(p))


def git_info(root: Path) -> dict[str, str]:
    """`git.commit`, and `git.dirty`: whether an input of the pipeline (`uncommitted_inputs`, so
    not dvc.lock nor a stage output) differs from that commit."""
    commit = _git(root, "rev-parse", "HEAD")
    if not commit:
        return {"git.commit": "unknown (not a git checkout)"}
    return {"git.commit": commit, "git.dirty": str(bool(uncommitted_inputs(root))).lower()}


def _tag_key(path: str) -> str:
    """A dvc.lock path as an MLflow tag-key suffix (no `..`, only allowed characters)."""
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    return re.sub(r"[^\w.\-/ ]", "_", "/".join(parts)) or "root"


def _is_dataset(path: str) -> bool:
    p = path.replace("\\", "/")
    if p.endswith((".py", ".yaml", ".yml", ".toml")):
        return False
    return not p.startswith(("src/", "stages/", "flows/", "models/", "metrics/", "tests/"))


def dvc_data_hashes(root: Path, variant: str | None = None) -> dict[str, str]:
    """md5 of every dataset recorded in dvc.lock: deps and outs of the data stages and of the
    variant's own stages (code, models and metrics excluded). Empty when dvc.lock is absent."""
    lock = Path(root) / "dvc.lock"
    if not lock.is_file():
        return {}
    doc = yaml.safe_load(lock.read_text(encoding="utf-8")) or {}
    out: dict[str, str] = {}
    for stage, body in (doc.get("stages") or {}).items():
        name, _, key = stage.partition("@")
        if key and variant is not None and key != variant:
            continue
        for entry in list(body.get("deps") or []) + list(body.get("outs") or []):
            path, md5 = entry.get("path", ""), entry.get("md5")
            if md5 and _is_dataset(path):
                out[_tag_key(path)] = md5
    return out


DVC_LOCK_ARTIFACT = "dvc"  # run artifact folder holding the dvc.lock of the pipeline run that registered it


def log_dvc_lock(root: Path, run_id: str, cfg: MlflowConfig) -> str:
    """Keep the workspace's `dvc.lock` (every stage's deps, params and outs hashes, as the run left
    them) as the artifact `dvc/dvc.lock` of MLflow run `run_id`, so that a person can reproduce the
    version (`dvc checkout` / `dvc repro` at its commit) or commit the lock file. Returns the
    artifact's path within the run."""
    from mlflow import MlflowClient  # lazy: see the module docstring

    uri = resolve_tracking_uri(Path(root), cfg)  # not `configure`: a flow's process keeps its MLflow state
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    lock = Path(root) / "dvc.lock"
    retry(lambda: client.log_artifact(run_id, str(lock), DVC_LOCK_ARTIFACT), "upload dvc.lock", cfg)
    return f"{DVC_LOCK_ARTIFACT}/dvc.lock"


def system_info() -> dict[str, str]:
    import torch  # lazy: seconds to import; only system_info needs it

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "cpu_count": str(os.cpu_count()),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }
    for mod in ("mlflow", "sentence_transformers", "transformers"):
        with contextlib.suppress(Exception):
            info[mod] = __import__(mod).__version__
    return info


def lineage_tags(root: Path, variant: str) -> dict[str, str]:
    """Tags that tie a run or a model version to its code, data and machine."""
    tags = {"variant": variant, **git_info(root), **dvc_experiment()}
    hashes = dvc_data_hashes(root, variant)
    if hashes:
        tags.update({f"dvc.{k}": v for k, v in hashes.items()})
    else:
        tags["dvc.lock"] = "absent (stage run outside dvc repro)"
    tags.update({f"sys.{k}": v for k, v in system_info().items()})
    return tags


def who() -> str:
    """The person (or job) behind an action: $SIMCSE_OPS_USER, else user@host."""
    env = os.environ.get("SIMCSE_OPS_USER")
    if env:
        return env
    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


# --------------------------------------------------------------------------------------------
# Runs


class RunLogger:
    """Thin handle on one MLflow run; every call is retried on connection errors.
    With `enabled=False` (non-zero DDP ranks) every method does nothing."""

    def __init__(self, client, run_id: str | None, cfg: MlflowConfig) -> None:
        self.client, self.run_id, self.cfg = client, run_id, cfg

    @property
    def enabled(self) -> bool:
        return self.run_id is not None

    def log_metrics(self, step: int, **metrics: float) -> None:
        if not self.enabled or not metrics:
            return
        from mlflow.entities import Metric  # lazy: see the module docstring

        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, int(step)) for k, v in metrics.items()]
        retry(lambda: self.client.log_batch(self.run_id, metrics=batch), "log metrics", self.cfg)

    def log_params(self, params: Mapping[str, Any]) -> None:
        if not self.enabled or not params:
            return
        from mlflow.entities import Param  # lazy: see the module docstring

        flat = flatten(params)
        existing = self.client.get_run(self.run_id).data.params
        batch = [Param(k, v[:6000]) for k, v in flat.items() if k not in existing]
        if batch:
            retry(lambda: self.client.log_batch(self.run_id, params=batch), "log params", self.cfg)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.enabled or not tags:
            return
        from mlflow.entities import RunTag  # lazy: see the module docstring

        batch = [RunTag(k, str(v)[:8000]) for k, v in tags.items()]
        retry(lambda: self.client.log_batch(self.run_id, tags=batch), "set run tags", self.cfg)

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        if self.enabled:
            retry(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path),
                  f"upload {Path(path).name}", self.cfg)

    def tag_model(self, model_dir: Path | str) -> None:
        """Tag this run with the hash of the model folder it produced (`model_sha256`), so that
        registration finds it (`run_for_model`); the folder itself is left untouched."""
        if self.enabled:
            self.set_tags({MODEL_TAG: model_hash(model_dir)})


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = json.dumps(list(v)) if isinstance(v, (list, tuple)) else str(v)
    return out


@contextlib.contextmanager
def start_run(
    variant: str,
    params: Mapping[str, Any] | None = None,
    root: Path | str = ".",
    cfg: MlflowConfig | None = None,
    enabled: bool = True,
    run_name: str | None = None,
) -> Iterator[RunLogger]:
    """Open a run for `variant` in the configured store with params, lineage and system tags.
    The run ends FINISHED, or FAILED if the block raises (the exception propagates)."""
    from mlflow import MlflowClient  # lazy: see the module docstring

    cfg = cfg or MlflowConfig()
    if not enabled:
        yield RunLogger(None, None, cfg)
        return
    root = Path(root)
    client = MlflowClient()
    exp_id = get_experiment_id(client, root, cfg)
    tags = {**lineage_tags(root, variant), "stage": "train", "user": who()}
    run = retry(
        lambda: client.create_run(exp_id, run_name=run_name or f"train-{variant}", tags=tags),
        "create a run", cfg,
    )
    logger = RunLogger(client, run.info.run_id, cfg)
    logger.log_params(params or {})
    status = "FAILED"
    try:
        yield logger
        status = "FINISHED"
    finally:
        with contextlib.suppress(Exception):
            retry(lambda: client.set_terminated(run.info.run_id, status), "end the run", cfg)


def log_training(
    variant: str,
    params: Mapping[str, Any],
    loss_curve: list[Mapping[str, Any]],
    dev_curve: list[Mapping[str, Any]],
    summary: Mapping[str, Any],
    model_dir: Path | str,
    root: Path | str = ".",
    cfg: MlflowConfig | None = None,
    tags: Mapping[str, Any] | None = None,
) -> str:
    """Log a finished training to a new run, tagged with the hash of `model_dir` (`tag_model`)
    and with `tags` (the hardware that made it: `train.precision`, `train.cpu_class`, ...).

    For a trainer that keeps its curves (and survives resumes): every row of `loss_curve`
    ({"step", "loss", "lr", ...}) and `dev_curve` ({"step", "dev_score"}: the model-selection
    score, named by train.json `dev_metric`) becomes a metric at its step; numeric `summary`
    entries (sentences_per_s, train_s, best_dev_score, ...) are logged at the last step. Returns
    the run id.
    """
    from mlflow.entities import Metric  # lazy: see the module docstring

    cfg = cfg or MlflowConfig()
    with start_run(variant, params=params, root=root, cfg=cfg) as run:
        ts = int(time.time() * 1000)
        metrics = [
            Metric(k, float(v), ts, int(row["step"]))
            for row in [*loss_curve, *dev_curve]
            for k, v in row.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        last = max((int(r["step"]) for r in [*loss_curve, *dev_curve]), default=0)
        metrics += [Metric(k, float(v), ts, last) for k, v in summary.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)]
        for i in range(0, len(metrics), 1000):  # MLflow's log_batch limit
            chunk = metrics[i:i + 1000]
            retry(lambda c=chunk: run.client.log_batch(run.run_id, metrics=c), "log metrics", cfg)
        if tags:
            run.set_tags(tags)
        run.tag_model(model_dir)
        return run.run_id


def run_for_model(
    variant: str,
    model_dir: Path | str,
    root: Path | str = ".",
    cfg: MlflowConfig | None = None,
    params: Mapping[str, Any] | None = None,
) -> RunLogger:
    """The run that produced `model_dir` (registration attaches its results to it):

    1. the newest run of the experiment tagged with this variant and the model folder's hash
       (`model_sha256`, set by training: `log_training`, `RunLogger.tag_model`);
    2. else a new run (the `base` variant is never trained; a model trained without tracking or
       against another store) with lineage tags, that hash, and the given params.
    """
    from mlflow import MlflowClient  # lazy: see the module docstring

    cfg = cfg or MlflowConfig()
    root, model_dir = Path(root), Path(model_dir)
    client = MlflowClient()
    digest = model_hash(model_dir)
    exp_id = get_experiment_id(client, root, cfg)
    found = retry(
        lambda: client.search_runs(
            [exp_id],
            filter_string=f"tags.variant = '{variant}' and tags.{MODEL_TAG} = '{digest}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        ),
        "search runs", cfg,
    )
    if found:
        return RunLogger(client, found[0].info.run_id, cfg)
    tags = {**lineage_tags(root, variant), MODEL_TAG: digest, "user": who(), "stage": "register"}
    run = retry(lambda: client.create_run(exp_id, run_name=f"{variant}", tags=tags), "create a run", cfg)
    retry(lambda: client.set_terminated(run.info.run_id, "FINISHED"), "end the run", cfg)
    logger = RunLogger(client, run.info.run_id, cfg)
    logger.log_params(params or {})
    return logger


def attach_results(logger: RunLogger, prefix: str, metrics: Mapping[str, Any],
                   files: list[Path] | tuple[Path, ...] = ()) -> None:
    """Log numeric entries of a flat metrics mapping as `<prefix>.<key>` and upload `files`
    (used for sts.json and bias.json)."""
    numeric = {f"{prefix}.{k}": float(v) for k, v in metrics.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if numeric:
        logger.log_metrics(0, **numeric)
    for f in files:
        if Path(f).is_file():
            logger.log_artifact(f, prefix)
