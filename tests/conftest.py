"""Shared fixtures: the real data root, the project's params, and a tiny random BERT; and which
tests are `slow` (left out of the fast lane, `python -m pytest -m "not slow"`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Nothing in the test suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


# Fixtures that start a server: a test using one is slow wherever it lives.
SERVER_FIXTURES = frozenset({"prefect_server"})


def pytest_collection_modifyitems(config, items):
    """Mark `slow` every test that starts servers, a browser or DVC end to end (`integration`,
    tests/integration/ and the PostgreSQL test of team mode) or uses a SERVER_FIXTURES fixture,
    besides the tests marked `slow` by hand (real training, the real encoder on real data)."""
    for item in items:
        if item.get_closest_marker("integration") or SERVER_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def params():
    from simcse_ops.config import load_params

    return load_params(ROOT / "params.yaml")


@pytest.fixture(scope="session")
def data_root(params) -> Path:
    root = params.data_root
    if not (root / "SOURCES.md").is_file():
        pytest.fail(f"{root}: the shared datasets are missing (set SIMCSE_DATA_ROOT or data.root)")
    return root


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32) saved as a Hugging Face folder.

    It reuses the default encoder's WordPiece tokenizer so that real sentences tokenise normally.
    Loads with `AutoModel` and (mean pooling) with `SentenceTransformer`.
    """
    from tests.tiny_bert import make_tiny_bert

    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    """The tiny BERT's tokenizer."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.fixture(scope="session")
def tiny_export_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """`backends.export_onnx(tiny_model_dir, ...)`: the ONNX graphs of the tiny BERT, as
    export@<variant> writes them to exports/<variant>."""
    from simcse_ops.backends import export_onnx

    out = tmp_path_factory.mktemp("tiny-export") / "exports"
    export_onnx(tiny_model_dir, out)
    return out
