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
from tests.registry_support import (
    export_st, free_port, make_project, tracking_env, wait_http, write_backends, write_metrics,
)

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


def _serve(uri: str, model_uri: str, folder):
    """Start `mlflow models serve` of `model_uri` on a free loopback port; yields the port."""
    port = free_port()
    log = folder / "serve.log"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri,
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


@pytest.fixture(scope="module")
def server(registered, tmp_path_factory):
    """`mlflow models serve` of simcse-base@champion (started once for the module): its port."""
    uri, _root = registered
    yield from _serve(uri, "models:/simcse-base@champion", tmp_path_factory.mktemp("serve"))


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


def _serve_champion(registered, tmp_path_factory, variant: str, backend: str, **rows):
    """The default encoder registered as simcse-<variant> with `serve.backend: <backend>` (its
    export logged with it, as register@V does with exports/V; sts.json `backends` rows from
    `write_backends(**rows)`) and served by the real `mlflow models serve` from
    `models:/simcse-<variant>@champion`: yields (port, model folder, export folder)."""
    import dataclasses

    from simcse_ops.backends import export_onnx
    from simcse_ops.config import load_params

    uri, root = registered
    model = root / "models" / "base"
    exported = root / "exports" / variant
    export_onnx(model, exported)
    mdir = write_backends(write_metrics(root / "metrics" / variant, TASKS, 81.0), TASKS, **rows)
    with tracking_env():
        params = load_params(root / "params.yaml")
        params = dataclasses.replace(params, serve=dataclasses.replace(params.serve, backend=backend))
        tracking.configure(root, params.mlflow)
        result = registration.register_variant(variant, model, mdir, params, root,
                                               base_metrics_dir=root / "metrics" / "base",
                                               log=lambda m: None, export_dir=exported)
    assert result["promoted"] and result["serve_backend"] == backend, result
    for port in _serve(uri, f"models:/simcse-{variant}@champion", tmp_path_factory.mktemp(f"serve-{backend}")):
        yield port, model, exported


@pytest.fixture(scope="module")
def int8_champion(registered, tmp_path_factory):
    """simcse-sup-nli served with onnx-int8 (`_serve_champion`)."""
    yield from _serve_champion(registered, tmp_path_factory, "sup-nli", "onnx-int8",
                               onnx=81.0, int8=80.9, offered=True)


def _served_and_local(champion, backend: str):
    """POST three sentences to a served champion: (its embeddings, `load_encoder(backend)`'s on the
    logged export, torch's); the same input rules hold on every backend (a null is a 400)."""
    from simcse_ops.backends import load_encoder
    from simcse_ops.encoder import load_sentence_transformer

    port, model, exported = champion
    sentences = [*PARAPHRASES, UNRELATED]
    status, out = _post(port, json.dumps({"inputs": sentences}).encode())
    assert status == 200, out
    served = np.asarray(out["predictions"], dtype=np.float32)
    _check_ordering(served)
    status, bad = _post(port, b'{"inputs": ["a", null]}')
    assert status == 400 and "item 1 is null" in bad["message"]
    local = np.asarray(load_encoder(model, backend, onnx_dir=exported).encode(sentences))
    return served, local, np.asarray(load_sentence_transformer(model, device="cpu").encode(sentences))


def test_an_onnx_int8_champion_is_served_with_its_backend(int8_champion):
    """The server answers with the int8 graph's embeddings (equal to `OnnxEncoder` on the logged
    export, not to torch's), which are still the same model (cosine to torch >= 0.99)."""
    served, int8, torch_emb = _served_and_local(int8_champion, "onnx-int8")
    np.testing.assert_allclose(served, int8, rtol=1e-4, atol=1e-4)
    cos = [_cos(a, b) for a, b in zip(served, torch_emb)]
    assert min(cos) >= 0.99 and not np.allclose(served, torch_emb, atol=1e-4), cos


@pytest.fixture(scope="module")
def openvino_champion(registered, tmp_path_factory):
    """simcse-unsup-wiki served with openvino (`_serve_champion`), the fastest offered backend on
    the x86 AMX class in benchmarks/encode_throughput.py."""
    yield from _serve_champion(registered, tmp_path_factory, "unsup-wiki", "openvino",
                               onnx=81.0, int8=80.9, offered=True, openvino=81.0)


def test_an_openvino_champion_is_served_with_its_backend(openvino_champion):
    """The server answers with OpenVINO's embeddings of the logged IR (at this CPU's precision),
    which stay the same model (cosine to torch >= 0.999)."""
    served, ov, torch_emb = _served_and_local(openvino_champion, "openvino")
    np.testing.assert_allclose(served, ov, rtol=1e-3, atol=1e-3)
    assert min(_cos(a, b) for a, b in zip(served, torch_emb)) >= 0.999
