"""Run `dvc` commands from Python: output streamed line by line, failures raised with DVC's stderr.

The Prefect flows (`flows/`) order DVC stages; they never re-implement one. This module is the one
place that starts a `dvc` process: with the interpreter that runs the flow (`python -m dvc`, so the
flow and DVC see the same installed packages), in a given workspace, calling `on_line` for every
line DVC or the stage command prints, and keeping the last lines of stderr for the error message.

It also provides `workspace_lock`: DVC 3 releases its repository lock while a stage command runs
and only fails (`'<out>' is busy`) when a second `dvc repro` touches the same outputs, so two flows
in one workspace must be serialised before they start DVC at all.

And `stage_files` / `stage_output`: a stage's declared files as DVC resolves them (foreach
expansion, `${...}` from params.yaml). Paths live in dvc.yaml only; the flows read a stage's
outputs (`stage_output(ws, "register@biomed", "registry.json")`) instead of rebuilding the path.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from simcse_ops.errors import EXIT_REFUSED, ConfigError, MissingInputError, UserError
from simcse_ops.run_name import RUN_NAME_ENV

LineHandler = Callable[[str, str], None]  # (stream name: "stdout" | "stderr", line without newline)

# The stages report progress as log lines (progress.py); a third-party tqdm bar that is still
# drawn reads its defaults from TQDM_* variables: one refresh every few seconds at most.
_QUIET_PROGRESS = {"TQDM_MININTERVAL": "5"}

LOCK_FILE = Path(".dvc") / "tmp" / "simcse-flows.lock"
DVC_FILE = "dvc.yaml"


class DvcError(UserError, RuntimeError):
    """A `dvc` command exited non-zero. The message ends with the tail of its stderr, where the
    failed stage says what went wrong; a flow's `main` exits 1 with it (errors.py)."""

    exit_status = EXIT_REFUSED

    def __init__(self, args: Sequence[str], returncode: int, workspace: Path, stderr_tail: list[str]):
        self.args_ = list(args)
        self.returncode = returncode
        self.workspace = workspace
        self.stderr_tail = stderr_tail
        tail = "\n".join(stderr_tail) if stderr_tail else "(no stderr output)"
        super().__init__(
            f"`dvc {' '.join(args)}` failed with exit code {returncode} in {workspace}; "
            f"last {len(stderr_tail)} line(s) of stderr:\n{tail}"
        )


@dataclass(frozen=True)
class DvcResult:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def dvc_command(args: Sequence[str]) -> list[str]:
    """The argv that runs `dvc ARGS` with the current interpreter."""
    return [sys.executable, "-m", "dvc", *args]


def _pump(stream, name: str, sink: collections.deque, keep: list[str], handler: LineHandler | None,
          lock: threading.Lock) -> None:
    # Universal newlines: a progress bar's carriage returns end lines too.
    for raw in stream:
        line = raw.rstrip("\n")
        if not line.strip():
            continue
        keep.append(line)
        sink.append(line)
        if handler is not None:
            with lock:
                handler(name, line)
    stream.close()


def require_dvc_repo(workspace: Path | str) -> Path:
    """`workspace`, resolved; a `MissingInputError` when it is not a DVC repository."""
    workspace = Path(workspace).resolve()
    if not (workspace / ".dvc").is_dir():
        raise MissingInputError(f"{workspace}: not a DVC repository (no .dvc folder); run `dvc init` "
                                f"or pass the project's folder")
    return workspace


def run_dvc(
    args: Sequence[str],
    workspace: Path | str,
    on_line: LineHandler | None = None,
    tail_lines: int = 40,
    env: dict[str, str] | None = None,
    run_name: str | None = None,
) -> DvcResult:
    """Run `dvc ARGS` in `workspace`, streaming every output line to `on_line(stream, line)`.

    `run_name` (a flow run's name) reaches the stage commands as $SIMCSE_OPS_RUN_NAME
    (`run_name.current_run_name`: the validate stage names its GX run after it).

    Raises `DvcError` (with the last `tail_lines` lines of stderr) when DVC exits non-zero, and
    `MissingInputError` when `workspace` is not a DVC repository.
    """
    workspace = require_dvc_repo(workspace)
    full_env = {**_QUIET_PROGRESS, **os.environ, **(env or {})}
    if run_name:
        full_env[RUN_NAME_ENV] = run_name
    start = time.monotonic()
    proc = subprocess.Popen(
        dvc_command(args),
        cwd=workspace,
        env=full_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
        bufsize=1,
    )
    lock = threading.Lock()
    out_all: list[str] = []
    err_all: list[str] = []
    err_tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    out_tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    pumps = [
        threading.Thread(target=_pump, args=(proc.stdout, "stdout", out_tail, out_all, on_line, lock)),
        threading.Thread(target=_pump, args=(proc.stderr, "stderr", err_tail, err_all, on_line, lock)),
    ]
    for t in pumps:
        t.start()
    try:
        returncode = proc.wait()
    except BaseException:
        # Cancelled (Ctrl-C, flow cancellation): do not leave DVC running without us.
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    finally:
        for t in pumps:
            t.join()
    result = DvcResult(
        args=tuple(args),
        returncode=returncode,
        stdout="\n".join(out_all),
        stderr="\n".join(err_all),
        seconds=time.monotonic() - start,
    )
    if returncode != 0:
        raise DvcError(args, returncode, workspace, list(err_tail))
    return result


_DOT_NODE = re.compile(r'^\s*"([^"]+)";\s*$')
_DOT_EDGE = re.compile(r'^\s*"([^"]+)"\s*->\s*"([^"]+)";\s*$')


def parse_dag_dot(text: str) -> dict[str, set[str]]:
    """`dvc dag --dot` output -> {stage: the stages it depends on directly}."""
    graph: dict[str, set[str]] = {}
    for line in text.splitlines():
        if m := _DOT_EDGE.match(line):
            up, down = m.groups()
            graph.setdefault(up, set())
            graph.setdefault(down, set()).add(up)
        elif m := _DOT_NODE.match(line):
            graph.setdefault(m.group(1), set())
    return graph


def stage_graph(workspace: Path | str, params=None) -> dict[str, set[str]]:
    """The pipeline DAG as DVC sees it (from the deps and outs in `dvc.yaml`), plus, with
    `params`, the model edges dvc.yaml cannot state (`model_edges`)."""
    graph = parse_dag_dot(run_dvc(["dag", "--dot"], workspace).stdout)
    if params is not None:
        for stage, upstream in model_edges(params).items():
            if stage in graph:
                graph[stage] |= {u for u in upstream if u in graph}
    return graph


def model_edges(params) -> dict[str, set[str]]:
    """Stages that read another variant's model, which DVC's templating cannot declare (it
    interpolates scalars, never a per-variant list of deps): `train@V` of a variant whose
    `base_model` is `models/<X>` needs `train@X`; `evaluate@V` of a domain variant scores each of
    its references (`Params.domain_references`) and needs their `train@` stages. The flows add
    these edges to DVC's graph when they plan a run; the stages record the models' sha256."""
    edges: dict[str, set[str]] = {}
    for name, v in params.variants.items():
        start = Path(v.base_model)
        if len(start.parts) == 2 and start.parts[0] == "models" and start.parts[1] in params.variants:
            edges.setdefault(f"train@{name}", set()).add(f"train@{start.parts[1]}")
        for ref in params.domain_references(name):
            edges.setdefault(f"evaluate@{name}", set()).add(f"train@{ref}")
    return edges


# --------------------------------------------------------------------------------------------
# Planning: which stage targets a flow runs, in which order


# Stages every run needs, in order, then the stages DVC expands per variant (`train@biomed`).
SHARED_STAGES = ("ingest", "dedup", "validate")
VARIANT_STAGES = ("train", "export", "evaluate", "bias", "register")
REPORT_STAGE = "report"  # the run report, over every variant's metrics: last, when dvc.yaml has it


def plan_stages(graph: Mapping[str, set[str]], variants: Sequence[str],
                variant_order: Sequence[str] | None = None) -> list[str]:
    """The stage targets to run, in order, for `variants`.

    `graph` is DVC's DAG ({stage: its direct upstream stages}, `stage_graph`). The targets are the
    shared stages and each variant's chain (the per-variant stages `dvc.yaml` defines for it);
    every stage upstream of a target is added (`register@biomed` needs `evaluate@base`), as
    `dvc repro` would. The order is topological; among stages that are ready together the shared
    stages come first, then variant by variant (in `variant_order`, params.yaml's order), each in
    train, export, evaluate, bias, register order. The `report` stage, when the graph has it,
    comes last, without its upstream stages: it reports every variant's metrics as they are.
    """
    missing = [s for s in SHARED_STAGES if s not in graph]
    if missing:
        raise ConfigError(
            f"dvc.yaml: no stage(s) {', '.join(missing)}; the pipeline runs {', '.join(SHARED_STAGES)} "
            f"first (stages found: {', '.join(sorted(graph)) or 'none'})"
        )
    targets = list(SHARED_STAGES)
    for v in variants:
        chain = [f"{s}@{v}" for s in VARIANT_STAGES if f"{s}@{v}" in graph]
        if not chain:
            raise ConfigError(
                f"dvc.yaml: no stage for variant {v!r} (expected {VARIANT_STAGES[0]}@{v}, ...); "
                "is it in params.yaml `variants`?"
            )
        targets.extend(chain)

    needed: set[str] = set()
    todo = list(targets)
    while todo:
        stage = todo.pop()
        if stage not in needed:
            needed.add(stage)
            todo.extend(graph.get(stage, ()))

    order = list(variant_order or []) + [v for v in variants if v not in (variant_order or [])]

    def rank(stage: str) -> tuple:
        kind, _, variant = stage.partition("@")
        if not variant:
            return (0, SHARED_STAGES.index(kind) if kind in SHARED_STAGES else len(SHARED_STAGES), stage)
        v_rank = order.index(variant) if variant in order else len(order)
        k_rank = VARIANT_STAGES.index(kind) if kind in VARIANT_STAGES else len(VARIANT_STAGES)
        return (1, v_rank, k_rank, stage)

    plan: list[str] = []
    done: set[str] = set()
    while len(plan) < len(needed):
        ready = [s for s in needed - done if graph.get(s, set()) & needed <= done]
        if not ready:
            raise ConfigError(f"dvc.yaml: a cycle among {', '.join(sorted(needed - done))}")
        nxt = min(ready, key=rank)
        plan.append(nxt)
        done.add(nxt)
    return plan + ([REPORT_STAGE] if REPORT_STAGE in graph and REPORT_STAGE not in plan else [])


def default_remote(workspace: Path | str) -> str | None:
    """The name of the workspace's default DVC remote (`dvc remote default`, any config level:
    .dvc/config, .dvc/config.local, the user's), None when there is none."""
    from dvc.repo import Repo  # lazy: DVC's API loads dozens of modules

    with Repo(str(workspace)) as repo:
        return repo.config["core"].get("remote") or None


@contextlib.contextmanager
def workspace_lock(
    workspace: Path | str,
    on_wait: Callable[[str], None] | None = None,
    timeout_s: float | None = None,
    poll_s: float = 2.0,
    holder: str = "",
) -> Iterator[Path]:
    """Hold an exclusive lock on the DVC workspace for the duration of the block.

    An advisory `flock` on `.dvc/tmp/simcse-flows.lock`: released by the kernel when the holder
    dies, so a crashed run never leaves a stale lock. The holder writes its description into the
    file so a waiting run can say whom it waits for (`on_wait`). `timeout_s=None` waits forever.
    """
    workspace = Path(workspace).resolve()
    path = workspace / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        start = time.monotonic()
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if timeout_s is not None and time.monotonic() - start > timeout_s:
                    raise TimeoutError(
                        f"{path}: workspace still locked after {timeout_s:.0f} s by "
                        f"{_read_holder(path)}"
                    ) from None
                if on_wait is not None and not told:
                    on_wait(f"waiting for the DVC workspace {workspace}, held by {_read_holder(path)}")
                    told = True
                time.sleep(poll_s)
        os.ftruncate(fd, 0)
        who = f"{holder} " if holder else ""
        since = time.strftime("%Y-%m-%dT%H:%M:%S")
        os.pwrite(fd, f"{who}(pid {os.getpid()}, since {since})\n".encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _read_holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        text = ""
    return text or "another process"


# --------------------------------------------------------------------------------------------
# The files a stage declares


@dataclass(frozen=True)
class StageFiles:
    """One stage's files as declared in dvc.yaml and resolved by DVC, relative to the workspace
    (POSIX). `outs`, `metrics` and `plots` are the stage's sections of the same names (disjoint);
    `deps` are its file dependencies (not `params`)."""

    stage: str
    workspace: Path
    deps: tuple[str, ...]
    outs: tuple[str, ...]
    metrics: tuple[str, ...]
    plots: tuple[str, ...]

    @property
    def outputs(self) -> tuple[str, ...]:
        return (*self.outs, *self.metrics, *self.plots)

    def output(self, name: str) -> Path:
        """The one output whose path is `name` or ends with `/name` (`registry.json`,
        `train/train.json`), as an absolute path; a `ConfigError` naming dvc.yaml and the stage
        when the stage declares none, or several."""
        found = [p for p in self.outputs if p == name or p.endswith(f"/{name}")]
        if len(found) != 1:
            what = "no output" if not found else f"{len(found)} outputs ({', '.join(found)})"
            raise ConfigError(
                f"{self.workspace / DVC_FILE}: stage {self.stage!r} declares {what} named {name!r} "
                f"(its outs, metrics and plots: {', '.join(self.outputs) or 'none'})"
            )
        return self.workspace / found[0]


def load_stage_files(
    workspace: Path | str, targets: Sequence[str] | None = None
) -> dict[str, StageFiles]:
    """{stage: StageFiles} for `targets` (default: every stage of dvc.yaml), read with one DVC load.

    Generated stages are named as DVC names them (`register@biomed`). An unknown target is a
    `ConfigError` naming dvc.yaml and the stages it defines; a workspace without `.dvc` is a
    `MissingInputError`, as for `run_dvc`.
    """
    # DVC's API is heavy to import (~0.3 s and many modules): only the callers that need it pay.
    from dvc.dependency.param import ParamsDependency
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    workspace = require_dvc_repo(workspace)
    dvcfile = workspace / DVC_FILE

    def rel(entry) -> str:
        return Path(os.path.relpath(entry.fs_path, workspace)).as_posix()

    try:
        with Repo(str(workspace)) as repo:
            files = {}
            for st in repo.stage.load_all(path=str(dvcfile)):
                outs = st.outs
                files[st.name] = StageFiles(
                    stage=st.name,
                    workspace=workspace,
                    deps=tuple(rel(d) for d in st.deps if not isinstance(d, ParamsDependency)),
                    outs=tuple(rel(o) for o in outs if not o.metric and not o.plot),
                    metrics=tuple(rel(o) for o in outs if o.metric),
                    plots=tuple(rel(o) for o in outs if o.plot and not o.metric),
                )
    except DvcException as e:
        raise ConfigError(f"{dvcfile}: {e}") from e
    if targets is None:
        return files
    unknown = [t for t in targets if t not in files]
    if unknown:
        raise ConfigError(
            f"{dvcfile}: no stage {', '.join(map(repr, unknown))} (stages: {', '.join(files) or 'none'})"
        )
    return {t: files[t] for t in targets}


def stage_files(workspace: Path | str, target: str) -> StageFiles:
    """The files stage `target` (`register@biomed`) declares in dvc.yaml, as DVC resolves them."""
    return load_stage_files(workspace, [target])[target]


def stage_output(workspace: Path | str, target: str, name: str) -> Path:
    """The absolute path of the output `name` (`registry.json`) that stage `target` declares."""
    return stage_files(workspace, target).output(name)
