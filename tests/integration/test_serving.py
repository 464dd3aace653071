"""The embedding service: the real default encoder registered in a temporary store, loaded with
`mlflow.pyfunc.load_model("models:/...@champion")` and served by the real
`mlflow models serve --env-manager local` on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest

from simcse_ops import registration, tracking
from simcse_ops.encoder import default_model_path
from tests.registry_support import export_st, free_port, make_project, tracking_env, wait_http, write_metrics

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TASKS = ["sts12", "sts13", "sts14", "sts15", "sts16", "stsb", "sickr"]
PARAPHRASES = ["A man is playing a guitar.", "Someone plays the guitar."]
UNRELATED = "The stock market fell sharply on Monday."


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _check_ordering(emb: np.ndarray) -> None:
    assert emb.shape == (3, 384)
    para, unrel1, unrel2 = _cos(emb[0], emb[1]), _cos(emb[0], emb[2]), _cos(emb[1], emb[2])
    assert para > unrel1 + 0.2 and para > unrel2 + 0.2, (para, unrel1, unrel2)


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """The default encoder registered as simcse-base (the reference: promoted to champion)."""
    root = tmp_path_factory.mktemp("serving-project")
    params_path = make_project(root)
    model = export_st(default_model_path(), root / "models" / "base")
    mdir = write_metrics(root / "metrics" / "base", TASKS, 80.0)
    with tracking_env():
        from simcse_ops.config import load_params

        params = load_params(params_path)
        uri = tracking.configure(root, params.mlflow)
        result = registration.register_variant("base", model, mdir, params, root, log=lambda m: None)
        assert result["promoted"] and result["version"] == 1
        yield uri, root


def test_pyfunc_loads_the_champion(registered):
    import mlflow

    model = mlflow.pyfunc.load_model("models:/simcse-base@champion")
    emb = np.asarray(model.predict([*PARAPHRASES, UNRELATED]))
    _check_ordering(emb)
    import pandas as pd

    from_df = np.asarray(model.predict(pd.DataFrame({"sentence": [*PARAPHRASES, UNRELATED]})))
    np.testing.assert_allclose(from_df, emb, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def server(registered, tmp_path_factory):
    """`mlflow models serve` of simcse-base@champion (started once for the module): its port."""
    uri, root = registered
    port, folder = free_port(), tmp_path_factory.mktemp("serve")
    log = folder / "serve.log"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/simcse-base@champion",
           "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True, cwd=folder)
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", 300, proc, log)
        yield port
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


def _post(port: int, body: bytes) -> tuple[int, dict]:
    """(HTTP status, JSON body) of POST /invocations; an error status is returned, not raised."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_mlflow_models_serve_answers_invocations(server):
    status, out = _post(server, json.dumps({"inputs": [*PARAPHRASES, UNRELATED]}).encode())
    assert status == 200
    _check_ordering(np.asarray(out["predictions"], dtype=np.float32))


# Each bad request and a phrase its 400 message must contain (limits: params.yaml `serve`,
# 256 sentences and 2000 characters).
BAD_REQUESTS = {
    "malformed JSON": (b'{"inputs": ["a",', "valid JSON"),
    "empty list": (b'{"inputs": []}', "only has 0 inputs"),
    "null item": (b'{"inputs": ["a", null]}', "item 1 is null"),
    "number item": (b'{"inputs": ["a", 3]}', "item 1 is int 3"),
    "null cell": (b'{"dataframe_split": {"columns": ["sentence"], "data": [["a"], [null]]}}', "item 1 is null"),
    "instances number": (b'{"instances": ["a", 2.5]}', "item 1 is float 2.5"),
    "too many sentences": (json.dumps({"inputs": ["a"] * 257}).encode(), "too many sentences: 257"),
    "too long": (json.dumps({"inputs": ["a", "x" * 2001]}).encode(), "item 1 has 2001 characters"),
    "batch_size 0": (b'{"inputs": ["a"], "params": {"batch_size": 0}}', "params.batch_size must be"),
}


def test_bad_requests_get_400_naming_the_problem_and_the_server_goes_on(server):
    for name, (body, phrase) in BAD_REQUESTS.items():
        status, out = _post(server, body)
        assert status == 400, (name, status, out)
        assert phrase in out["message"], (name, out["message"][-500:])
    status, out = _post(server, json.dumps({"inputs": PARAPHRASES}).encode())
    assert status == 200 and np.asarray(out["predictions"]).shape == (2, 384)
