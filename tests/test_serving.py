"""The pyfunc refuses bad input with HTTP 400 naming the problem (serving.py): the validation
itself, `predict` before any model is loaded, and the scoring server's own parsing of the request
(in process, on a stub encoder) with the model's real signature; serve.backend auto chooses the
fastest offered backend."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import load_model, save_model, scoring_server

from simcse_ops import serving
from simcse_ops.config import ServeConfig
from simcse_ops.serving import SentenceEncoderModel, check_sentences, signature
from simcse_ops.uris import ENCODER_ARTIFACT, ONNX_ARTIFACT

MAX_BATCH, MAX_CHARS = 4, 10


def _refused(fn, *args, **kwargs) -> str:
    with pytest.raises(MlflowException) as e:
        fn(*args, **kwargs)
    assert e.value.get_http_status_code() == 400, e.value.message
    return e.value.message


@pytest.mark.parametrize(
    "values, message",
    [
        ([], r"empty input: expected 1 to serve\.max_batch=4 sentences, got none"),
        (["a"] * 5, r"too many sentences: 5, more than serve\.max_batch=4; split the request"),
        ([None], r"item 0 is null; expected a string"),
        (["a", float("nan")], r"item 1 is null"),
        (["a", pd.NA], r"item 1 is null"),
        (["a", 3], r"item 1 is int 3; expected a string"),
        (["a", 1.5], r"item 1 is float 1\.5; expected a string"),
        ([True], r"item 0 is bool True; expected a string"),
        (["a", ["b"]], r"item 1 is list \['b'\]; expected a string"),
        ([{"k": 1}], r"item 0 is dict \{'k': 1\}; expected a string"),
        (["a", "x" * 11], r"item 1 has 11 characters, more than serve\.max_chars=10"),
        (["a", None, 2, "b"], r"item 1 is null; expected a string \(2 bad items, the first shown\)"),
        ([np.array(None, dtype=object)], r"item 0 is null"),  # `instances` records: 0-d arrays
    ],
)
def test_check_sentences_refuses_with_400(values, message):
    assert re.search(message, _refused(check_sentences, values, MAX_BATCH, MAX_CHARS))


def test_check_sentences_accepts_the_limits_and_returns_str():
    values = ["x" * MAX_CHARS, np.str_("b"), np.array("c"), ""]
    assert check_sentences(values, MAX_BATCH, MAX_CHARS) == ["x" * MAX_CHARS, "b", "c", ""]
    assert all(type(s) is str for s in check_sentences(values, MAX_BATCH, MAX_CHARS))


def test_predict_refuses_before_loading_the_encoder():
    """No model, no context: a bad request never reaches the encoder."""
    model = SentenceEncoderModel(max_batch=MAX_BATCH, max_chars=MAX_CHARS)
    assert "empty input" in _refused(model.predict, None, pd.DataFrame())
    assert "item 1 is null" in _refused(model.predict, None, pd.DataFrame({"sentence": ["a", None]}))
    assert "item 0 is int" in _refused(model.predict, None, pd.Series([7]))
    assert "too many sentences: 5" in _refused(model.predict, None, np.array(["a"] * 5))
    msg = _refused(model.predict, None, ["a"], params={"batch_size": 0})
    assert "params.batch_size must be an integer >= 1, got 0" in msg


def test_limits_default_to_serve_config_and_survive_old_pickles():
    cfg = ServeConfig()
    model = SentenceEncoderModel()
    assert (model.batch_size, model.max_batch, model.max_chars, model.backend) == (
        cfg.batch_size, cfg.max_batch, cfg.max_chars, cfg.backend)
    old = SentenceEncoderModel.__new__(SentenceEncoderModel)  # unpickled from before the limits
    old.__dict__.update({"batch_size": 64, "_model": None})
    assert old.max_batch == cfg.max_batch and old.max_chars == cfg.max_chars


def test_onnx_backend_without_the_onnx_artifact_is_refused_at_load(tmp_path):
    context = SimpleNamespace(artifacts={ENCODER_ARTIFACT: str(tmp_path)})
    with pytest.raises(MlflowException, match=r"backend 'onnx-int8' needs the export.*artifact 'onnx'"):
        SentenceEncoderModel(backend="onnx-int8").load_context(context)


def test_signature_keeps_raw_values_and_the_batch_size_default():
    sig = signature(384, batch_size=32)
    assert sig.inputs.to_dict() == [{"type": "any", "required": True}]
    assert sig.params.to_dict()[0]["default"] == 32


# --------------------------------------------------------------------------------------------
# The scoring server's parsing (mlflow.pyfunc.scoring_server.invocations, as `mlflow models serve`
# runs it) with the real signature, on a stub encoder: what reaches `predict` is what JSON said.


class _StubEncoder:
    def encode(self, sentences, batch_size, **_kw):
        return np.array([[len(s), batch_size] for s in sentences], dtype=np.float32)


class _StubModel(SentenceEncoderModel):
    def load_context(self, context) -> None:
        self._model = _StubEncoder()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    path = tmp_path_factory.mktemp("pyfunc") / "model"
    save_model(str(path), python_model=_StubModel(max_batch=MAX_BATCH, max_chars=MAX_CHARS, batch_size=3),
               signature=signature(2, batch_size=3), pip_requirements=[])
    model = load_model(str(path))
    return model, model.metadata.get_input_schema()


def _invoke(served, body: bytes):
    model, schema = served
    try:
        r = scoring_server.invocations(body, "application/json", model, schema)
    except MlflowException as e:
        return e.get_http_status_code(), e.message
    return r.status, json.loads(r.response)


@pytest.mark.parametrize(
    "body, message",
    [
        (b'{"inputs": ["a",', "Ensure that input is a valid JSON"),  # refused by MLflow itself
        (b'{"inputs": []}', "the provided value only has 0 inputs"),  # refused by MLflow itself
        (b'{"inputs": ["a", null]}', "item 1 is null"),
        (b'{"inputs": ["a", 3]}', "item 1 is int 3"),
        (b'{"instances": ["a", false]}', "item 1 is bool False"),
        (b'{"dataframe_split": {"columns": ["sentence"], "data": [["a"], [null]]}}', "item 1 is null"),
        (b'{"dataframe_records": [{"sentence": "a"}, {"sentence": 2}]}', "item 1 is int 2"),
        (b'{"inputs": ["a", "b", "c", "d", "e"]}', "too many sentences: 5"),
        (b'{"inputs": ["a", "12345678901"]}', "item 1 has 11 characters"),
        (b'{"inputs": ["a"], "params": {"batch_size": 0}}', "params.batch_size must be an integer >= 1"),
    ],
)
def test_scoring_server_answers_bad_requests_with_400(served, body, message):
    status, out = _invoke(served, body)
    assert status == 400 and message in out, (status, out)


def test_scoring_server_answers_good_requests(served):
    assert _invoke(served, b'{"inputs": ["ab", "abcd"]}') == (200, {"predictions": [[2.0, 3.0], [4.0, 3.0]]})
    status, out = _invoke(served, b'{"dataframe_split": {"columns": ["sentence"], "data": [["abc"]]}}')
    assert (status, out) == (200, {"predictions": [[3.0, 3.0]]})
    status, out = _invoke(served, b'{"instances": [{"sentence": "a"}], "params": {"batch_size": 8}}')
    assert (status, out) == (200, {"predictions": [[1.0, 8.0]]})


# --------------------------------------------------------------------------------------------
# serve.backend auto: the fastest of torch and the offered backends on this CPU


class _Timed:
    """An encoder whose encode takes `seconds` per call (a stand-in for a backend's speed)."""

    def __init__(self, seconds: float, fail: bool = False):
        self.seconds, self.fail, self.calls = seconds, fail, 0

    def encode(self, sentences, batch_size=64):
        import time

        if self.fail:
            raise RuntimeError("no such instruction")
        self.calls += 1
        time.sleep(self.seconds)
        return np.zeros((len(sentences), 4), np.float32)


def test_choose_backend_keeps_the_fastest_and_skips_one_that_fails():
    encoders = {"torch": _Timed(0.03), "onnx": _Timed(0.02), "openvino": _Timed(0.001),
                "openvino-int8": _Timed(0.0, fail=True)}
    name, encoder, speeds = serving.choose_backend({n: (lambda e=e: e) for n, e in encoders.items()},
                                                   batch_size=32, rounds=2)
    assert name == "openvino" and encoder is encoders["openvino"]
    assert list(speeds) == ["torch", "onnx", "openvino"]  # the failing one is not timed
    assert speeds["openvino"] > speeds["onnx"] > speeds["torch"]
    assert encoders["torch"].calls == 3  # a warm-up batch, then the timed rounds


def test_choose_backend_never_picks_one_slower_than_torch():
    name, _, speeds = serving.choose_backend({"torch": lambda: _Timed(0.0), "onnx-int8": lambda: _Timed(0.02)},
                                             batch_size=32, rounds=1)
    assert name == "torch" and speeds["torch"] > speeds["onnx-int8"]
    with pytest.raises(RuntimeError, match="no such instruction"):  # torch must work
        serving.choose_backend({"torch": lambda: _Timed(0.0, fail=True)}, batch_size=32)


def test_auto_serves_with_an_offered_backend_and_its_embeddings(tiny_model_dir, tiny_export_dir):
    from simcse_ops.backends import load_encoder

    model = SentenceEncoderModel(backend="auto", offered=("torch", "onnx", "openvino"), batch_size=8)
    model.load_context(SimpleNamespace(artifacts={ENCODER_ARTIFACT: str(tiny_model_dir),
                                                  ONNX_ARTIFACT: str(tiny_export_dir)}))
    assert set(model.speeds) == {"torch", "onnx", "openvino"} and model.served in model.speeds
    assert model.speeds[model.served] == max(model.speeds.values())
    sentences = ["A man is playing a guitar.", "Hi", "Two dogs run through a field."]
    expected = load_encoder(tiny_model_dir, model.served, onnx_dir=tiny_export_dir).encode(sentences, 8)
    np.testing.assert_allclose(model.predict(None, sentences), expected, rtol=1e-4, atol=1e-5)


def test_auto_without_an_export_serves_torch(tiny_model_dir):
    model = SentenceEncoderModel(backend="auto", offered=("torch",))
    model.load_context(SimpleNamespace(artifacts={ENCODER_ARTIFACT: str(tiny_model_dir)}))
    assert model.served == "torch" and list(model.speeds) == ["torch"]
