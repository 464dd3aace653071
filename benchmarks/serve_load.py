"""Load test of the real embedding service (`mlflow models serve`) per encoder backend.

For each backend in `--backends` (torch, onnx, onnx-int8, openvino, openvino-int8) the encoder is saved as the project's
pyfunc model, as `registration._log_model` logs it (`SentenceEncoderModel` with the limits of
params.yaml `serve` and that backend, artifacts `encoder` = the sentence-transformers folder,
`model_card`, and for the exported backends `onnx` = the folder of `backends.export_onnx`; the
project's signature and pinned pip requirements), with `mlflow.pyfunc.save_model` into a temporary
folder. The real `mlflow models serve -m <folder> --env-manager local -h 127.0.0.1 -p <free port>`
is started in its own process group (killed at the end, also on error or Ctrl-C), /ping is awaited
and two warm-up requests are sent. Then, for each concurrency in `--concurrency`, that many client
threads (one keep-alive HTTP connection each) send `--requests` POST /invocations in all (stopping
early after `--time-limit` seconds), each `{"inputs": [...]}` with 1-64 real sentences (the
benchmark's sentence mix: STS test sentences and wiki1m lines; batch sizes and sentences from a
fixed seed, the same request list for every backend). A request counts as an error unless it
answers HTTP 200 with one embedding per sentence.

Reported per backend and concurrency: requests/s and sentences/s (over the wall time of that
level), latency p50/p95/p99 in ms (successful requests), error count, and the server's peak RSS
(VmRSS of the server process and all its descendants, summed, sampled every 100 ms, via psutil),
plus the server's start-up time and its peak RSS over its whole life. Prints one JSON line.

    python benchmarks/serve_load.py --requests 200
    python benchmarks/serve_load.py --backends onnx-int8 --concurrency 1,8 --requests 50
    python benchmarks/serve_load.py --model tiny/bert --exports /tmp/tiny-onnx --requests 8 --concurrency 1,4
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent))  # encode_throughput: the sentence mix
from encode_throughput import ROOT, ensure_exports, load_sentences, resolve_model_dir  # noqa: E402

BACKENDS = ("torch", "onnx", "onnx-int8", "openvino", "openvino-int8")


# --------------------------------------------------------------------------------------------
# The pyfunc model and its server


def save_pyfunc(model_dir: Path, backend: str, onnx_dir: Path | None, dest: Path, serve_cfg) -> Path:
    """`mlflow.pyfunc.save_model` of the project's pyfunc, as registration logs it."""
    import mlflow

    from simcse_ops.registration import _embedding_dim
    from simcse_ops.serving import (
        CARD_ARTIFACT, ENCODER_ARTIFACT, SentenceEncoderModel, pip_requirements, signature,
    )
    from simcse_ops.uris import ONNX_ARTIFACT

    card = dest.parent / f"{dest.name}-card.md"
    card.write_text(f"# load-test model ({backend})\n", encoding="utf-8")
    artifacts = {ENCODER_ARTIFACT: str(model_dir), CARD_ARTIFACT: str(card)}
    if backend != "torch":
        artifacts[ONNX_ARTIFACT] = str(onnx_dir)
    mlflow.pyfunc.save_model(
        str(dest),
        python_model=SentenceEncoderModel(batch_size=serve_cfg.batch_size, max_batch=serve_cfg.max_batch,
                                          max_chars=serve_cfg.max_chars, backend=backend),
        artifacts=artifacts,
        signature=signature(_embedding_dim(model_dir), batch_size=serve_cfg.batch_size),
        pip_requirements=pip_requirements(),
    )
    return dest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RssSampler(threading.Thread):
    """Peak summed VmRSS (bytes) of a process and all its descendants, sampled every `every` s."""

    def __init__(self, pid: int, every: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.peak = 0  # over the whole run
        self.window = 0  # since the last `reset_window`
        self._halt = threading.Event()

    def sample(self) -> int:
        import psutil

        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def run(self) -> None:
        while not self._halt.is_set():
            rss = self.sample()
            self.peak, self.window = max(self.peak, rss), max(self.window, rss)
            self._halt.wait(self.every)

    def reset_window(self) -> None:
        self.window = 0

    def stop(self) -> None:
        self._halt.set()


class Server:
    """`mlflow models serve` of a saved pyfunc folder, in its own process group."""

    def __init__(self, model_path: Path, log: Path, start_timeout: float):
        self.port = free_port()
        self.log = log
        cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(model_path), "--env-manager", "local",
               "-h", "127.0.0.1", "-p", str(self.port)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True, cwd=model_path.parent)
        self.rss = RssSampler(self.proc.pid)
        self.rss.start()
        try:
            self._wait(start_timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.perf_counter() - t0

    def _wait(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/ping")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"/ping did not answer within {timeout}s: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        self.rss.stop()
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
            except ProcessLookupError:
                pass


# --------------------------------------------------------------------------------------------
# Clients


def make_requests(sentences: list[str], n: int, seed: int, max_batch: int = 64) -> list[list[str]]:
    rng = random.Random(seed)
    return [rng.sample(sentences, rng.randint(1, max_batch)) for _ in range(n)]


def post(conn: http.client.HTTPConnection, batch: list[str]) -> bool:
    conn.request("POST", "/invocations", body=json.dumps({"inputs": batch}),
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    body = resp.read()
    if resp.status != 200:
        return False
    preds = json.loads(body).get("predictions")
    return isinstance(preds, list) and len(preds) == len(batch)


def run_level(port: int, requests: list[list[str]], concurrency: int, time_limit: float, timeout: float) -> dict:
    """Send `requests` from `concurrency` threads (stop starting new ones after `time_limit` s)."""
    lock = threading.Lock()
    state = {"next": 0}
    lat: list[float] = []
    sent = {"ok": 0, "errors": 0, "sentences": 0}
    error_examples: list[str] = []
    deadline = time.perf_counter() + time_limit

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        while True:
            with lock:
                i = state["next"]
                if i >= len(requests) or time.perf_counter() > deadline:
                    break
                state["next"] += 1
            batch = requests[i]
            t0 = time.perf_counter()
            try:
                ok, why = post(conn, batch), "bad status or shape"
            except (OSError, http.client.HTTPException, ValueError) as e:
                ok, why = False, f"{type(e).__name__}: {e}"
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
            dt = time.perf_counter() - t0
            with lock:
                if ok:
                    lat.append(dt)
                    sent["ok"] += 1
                    sent["sentences"] += len(batch)
                else:
                    sent["errors"] += 1
                    if len(error_examples) < 3:
                        error_examples.append(why)
        conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = sorted(x * 1000 for x in lat)

    def pct(q: float) -> float | None:
        return round(ms[min(len(ms) - 1, int(q * len(ms)))], 1) if ms else None

    return {
        "concurrency": concurrency, "requests": sent["ok"] + sent["errors"], "ok": sent["ok"],
        "errors": sent["errors"], "error_examples": error_examples,
        "requests_per_s": round(sent["ok"] / wall, 2), "sentences_per_s": round(sent["sentences"] / wall, 1),
        "latency_ms": {"p50": round(statistics.median(ms), 1) if ms else None, "p95": pct(0.95), "p99": pct(0.99),
                       "max": round(ms[-1], 1) if ms else None},
        "wall_s": round(wall, 2), "stopped_by_time_limit": sent["ok"] + sent["errors"] < len(requests),
    }


def bench_backend(backend: str, model_dir: Path, onnx_dir: Path | None, tmp: Path, serve_cfg, requests,
                  levels: list[int], args) -> dict:
    dest = save_pyfunc(model_dir, backend, onnx_dir, tmp / f"pyfunc-{backend}", serve_cfg)
    server = Server(dest, tmp / f"serve-{backend}.log", args.start_timeout)
    try:
        for batch in requests[:2]:  # warm-up: loads lazily initialised kernels
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=args.request_timeout)
            post(conn, batch)
            conn.close()
        rows = []
        for c in levels:
            server.rss.reset_window()
            row = run_level(server.port, requests, c, args.time_limit, args.request_timeout)
            row["peak_rss_mb"] = round(max(server.rss.window, server.rss.sample()) / 2**20, 1)
            rows.append(row)
            print(f"{backend} c={c}: {row['requests_per_s']} req/s, {row['sentences_per_s']} sentences/s, "
                  f"p50 {row['latency_ms']['p50']} ms, errors {row['errors']}", file=sys.stderr)
        return {"backend": backend, "startup_s": round(server.startup_s, 1),
                "peak_rss_mb": round(server.rss.peak / 2**20, 1), "levels": rows}
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="'default' (the bundled encoder) or a model folder")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    ap.add_argument("--time-limit", type=float, default=180.0,
                    help="seconds per concurrency level after which no new request is started")
    ap.add_argument("--max-request-batch", type=int, default=64, help="sentences per request: 1 to this")
    ap.add_argument("--exports", help="folder with model.onnx/model_int8.onnx (exported there if missing); "
                                      "default: a temporary folder")
    ap.add_argument("--start-timeout", type=float, default=300.0)
    ap.add_argument("--request-timeout", type=float, default=120.0)
    ap.add_argument("--pool", type=int, default=5000, help="distinct real sentences the requests draw from")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so that the `finally` blocks kill the servers' process groups
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    from simcse_ops.config import load_params

    backends = [b for b in args.backends.split(",") if b]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise SystemExit(f"unknown backend(s) {unknown}: choose from {', '.join(BACKENDS)}")
    levels = [int(c) for c in args.concurrency.split(",")]
    serve_cfg = load_params(args.params).serve
    pool = [s for s in load_sentences(args.pool, args.seed, args.params) if len(s) <= serve_cfg.max_chars]
    requests = make_requests(pool, args.requests, args.seed, min(args.max_request_batch, serve_cfg.max_batch))
    model_dir = resolve_model_dir(args.model)
    t_start = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        tmp = Path(tmp)
        onnx_dir = ensure_exports(model_dir, args.exports, str(tmp)) if any(b != "torch" for b in backends) else None
        for backend in backends:
            results.append(bench_backend(backend, model_dir, onnx_dir, tmp, serve_cfg, requests, levels, args))
    from simcse_ops.hardware import machine_report

    print(json.dumps({
        "benchmark": "serve_load",
        "model": args.model, "model_dir": str(model_dir),
        "server": "mlflow models serve --env-manager local (1 worker)",
        "requests_per_level": args.requests, "time_limit_s": args.time_limit,
        "sentences_per_request": [1, min(args.max_request_batch, serve_cfg.max_batch)],
        "mean_sentences_per_request": round(statistics.mean(len(r) for r in requests), 1),
        "serve": {"batch_size": serve_cfg.batch_size, "max_batch": serve_cfg.max_batch,
                  "max_chars": serve_cfg.max_chars},
        "results": results,
        "total_errors": sum(row["errors"] for r in results for row in r["levels"]),
        "machine": machine_report(),
        "seconds": round(time.perf_counter() - t_start, 1),
    }), flush=True)


if __name__ == "__main__":
    main()
