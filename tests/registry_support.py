"""Helpers for the tracking/registry/serving tests: a project folder in tmp_path with the real
params.yaml (so the store lands in tmp_path/mlflow), metrics files, sentence-transformers exports,
and a real `mlflow server` process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_project(tmp: Path, mlflow_overrides: dict | None = None) -> Path:
    """tmp/params.yaml = the project's params (data.root made absolute), with `mlflow` overridden;
    a domain variant is judged against base alone (`write_domain` writes base's results only)."""
    import yaml

    raw = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    raw["data"]["root"] = str((ROOT / raw["data"]["root"]).resolve())
    raw["register"]["domain"]["references"] = ["base"]
    if mlflow_overrides:
        raw["mlflow"] = {**raw.get("mlflow", {}), **mlflow_overrides}
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return tmp / "params.yaml"


def write_metrics(folder: Path, tasks: list[str], scores: dict[str, float] | float,
                  mean_abs: float = 0.30, n_significant: int = 2, n_tests: int = 3) -> Path:
    """sts.json (each task; avg = their mean) and bias.json in the shapes the stages write."""
    folder.mkdir(parents=True, exist_ok=True)
    if not isinstance(scores, dict):
        scores = {t: float(scores) for t in tasks}
    sts = {t: float(scores[t]) for t in tasks}
    sts["avg"] = sum(sts.values()) / len(tasks)
    (folder / "sts.json").write_text(json.dumps(sts), encoding="utf-8")
    tests = {f"sent-weat{i + 1}": {"effect_size": mean_abs * (1 if i % 2 else -1), "p_value": 0.001 if i < n_significant else 0.5,
                                   "significant": i < n_significant} for i in range(n_tests)}
    bias = {"tests": tests, "summary": {"mean_abs_effect_size": mean_abs, "n_significant": n_significant,
                                         "n_tests": n_tests}}
    (folder / "bias.json").write_text(json.dumps(bias), encoding="utf-8")
    return folder


def write_backends(folder: Path, tasks: list[str], onnx: float, int8: float, offered: bool,
                   min_cosine: float = 0.99999, openvino: float | None = None) -> Path:
    """Add sts.json `backends` as the evaluate stage writes it: torch's row copied, onnx and
    onnx-int8 at `onnx` and `int8` on every task (avg = that), onnx-int8 `offered` as given;
    with `openvino`, an offered openvino row at that value."""
    sts = json.loads((folder / "sts.json").read_text(encoding="utf-8"))

    def row(value: float) -> dict:
        return {"tasks": {t: value for t in tasks}, "avg": value,
                "parity": {"min": min_cosine, "mean": 1.0, "p01": min_cosine, "n": 300}, "encode_s": 1.0}

    drop = round(sts["avg"] - int8, 2)
    sts["backends"] = {
        "torch": {"tasks": {t: sts[t] for t in tasks}, "avg": sts["avg"]},
        "onnx": row(onnx),
        "onnx-int8": {**row(int8), "offered": offered, "drop": drop, "max_drop": 0.3,
                      "reason": f"STS avg torch {sts['avg']:.2f} - onnx-int8 {int8:.2f} = {drop:.2f} "
                                f"{'<=' if offered else 'is more than'} serve.int8_max_drop 0.3"},
    }
    if openvino is not None:
        sts["backends"]["openvino"] = {**row(openvino), "offered": True, "drop": round(sts["avg"] - openvino, 2),
                                       "max_drop": 0.3, "min_cosine": 0.99, "reason": "within the bars",
                                       "cpu_class": "x86 test"}
    (folder / "sts.json").write_text(json.dumps(sts), encoding="utf-8")
    return folder


def write_domain(folder: Path, variant: str, values, base_values, task: str = "pubmedqa_conclusion",
                 metric: str = "ndcg@10") -> Path:
    """domain.json and domain_items.json as the evaluate stage writes them: per-query values of
    `variant` and of the base encoder on one retrieval task (the variant's primary)."""
    import numpy as np

    def entry(v):
        v = np.asarray(v, dtype=float)
        m = round(float(v.mean() * 100), 4)
        return {"metrics": {metric: m}, "ci": {metric: [m - 1.0, m + 1.0]}, "timing": {}}

    ids = [f"q{i}" for i in range(len(values))]
    summary = {"variant": variant, "primary": task, "models": [variant, "base", "bm25"],
               "tasks": {task: {"kind": "retrieval", "source": task, "split": "test", "metric": metric,
                                "n": len(ids), "results": {variant: entry(values), "base": entry(base_values)},
                                "vs_base": {}}},
               "bootstrap": {"n_resamples": 1000, "confidence": 0.95, "seed": 0}}
    items = {"tasks": {task: {variant: {"id": ids, metric: [float(x) for x in values]},
                              "base": {"id": ids, metric: [float(x) for x in base_values]}}}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "domain.json").write_text(json.dumps(summary), encoding="utf-8")
    (folder / "domain_items.json").write_text(json.dumps(items), encoding="utf-8")
    return folder


def export_st(src: Path | str, out: Path) -> Path:
    """A sentence-transformers folder of `src` (mean pooling), as models/<variant>/ holds."""
    from simcse_ops.encoder import load_sentence_transformer

    model = load_sentence_transformer(src, device="cpu")
    model.save(str(out), safe_serialization=True)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text()[-3000:] if log else ''}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout}s: {log.read_text()[-3000:] if log else ''}")


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 serving artifacts from `folder`/artifacts; its backend
    store is `backend_uri` (default: SQLite in `folder`), handed over through the environment
    (MLFLOW_BACKEND_STORE_URI) so that a database password never shows on a command line."""

    def __init__(self, folder: Path, port: int | None = None, backend_uri: str | None = None) -> None:
        self.folder, self.port = folder, port or free_port()
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.port}"
        self.backend_uri = backend_uri or f"sqlite:///{folder / 'mlflow.db'}"

    def start(self, timeout: float = 120) -> "MlflowServer":
        self.folder.mkdir(parents=True, exist_ok=True)
        log = self.folder / "server.log"
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
               "--serve-artifacts", "--artifacts-destination", str(self.folder / "artifacts"), "--workers", "1"]
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        env["MLFLOW_BACKEND_STORE_URI"] = self.backend_uri
        self.proc = subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True, cwd=self.folder)
        wait_http(f"{self.url}/health", timeout, self.proc, log)
        return self

    def kill(self) -> None:
        """SIGKILL the server and its workers (its own process group, started above)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None
        # the port must be closed before the test goes on
        deadline = time.time() + 20
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.2)


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


class tracking_env:
    """Run a block with MLFLOW_TRACKING_URI unset (or set to `uri`), restoring the variable and
    MLflow's in-process URIs afterwards (mlflow.set_tracking_uri exports the variable itself)."""

    def __init__(self, uri: str | None = None) -> None:
        self.uri = uri

    def __enter__(self):
        self.saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
        if self.uri is not None:
            os.environ["MLFLOW_TRACKING_URI"] = self.uri
        return self

    def __exit__(self, *exc):
        import mlflow

        mlflow.set_tracking_uri(self.saved)
        mlflow.set_registry_uri(self.saved)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        if self.saved is not None:
            os.environ["MLFLOW_TRACKING_URI"] = self.saved
        return False
