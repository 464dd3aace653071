"""simcse_ops.tracking: store resolution, lineage tags, retries, and runs in a real SQLite store."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import requests

from simcse_ops import tracking
from simcse_ops.config import MlflowConfig
from tests.registry_support import tracking_env


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A real embedded store (SQLite + artifact folder) in a temporary project folder."""
    root = tmp_path_factory.mktemp("project")
    with tracking_env():
        cfg = MlflowConfig(experiment="tracking-test")
        uri = tracking.configure(root, cfg)
        yield root, cfg, uri


def test_embedded_default_and_env_override(tmp_path, monkeypatch):
    cfg = MlflowConfig()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_tracking_uri(tmp_path, cfg) == f"sqlite:///{tmp_path.resolve()}/mlflow/mlflow.db"
    assert tracking.artifact_root(tmp_path, cfg) == (tmp_path / "mlflow" / "artifacts").resolve().as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking.resolve_tracking_uri(tmp_path, cfg) == "http://127.0.0.1:5999"


def test_import_has_no_side_effects(tmp_path):
    code = textwrap.dedent("""
        import os, simcse_ops.tracking, simcse_ops.registration, simcse_ops.serving, simcse_ops.cli
        from mlflow.tracking._tracking_service.utils import is_tracking_uri_set
        assert not is_tracking_uri_set(), "tracking URI set at import"
        assert "MLFLOW_TRACKING_URI" not in os.environ
        assert not os.path.exists("mlflow"), "mlflow/ created at import"
    """)
    env = {k: v for k, v in __import__("os").environ.items() if k != "MLFLOW_TRACKING_URI"}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_configure_creates_store_folder(store):
    root, cfg, uri = store
    assert uri == f"sqlite:///{(root / 'mlflow' / 'mlflow.db').resolve()}"
    assert (root / "mlflow" / "artifacts").is_dir()


def test_dvc_hashes_take_datasets_of_the_variant_only(tmp_path):
    (tmp_path / "dvc.lock").write_text(textwrap.dedent("""
        schema: '2.0'
        stages:
          ingest:
            cmd: python -m stages.ingest
            deps:
            - path: ../shared/data/sts
              md5: aaa.dir
            - path: stages/ingest.py
              md5: code1
            outs:
            - path: data/ingested
              md5: bbb.dir
          train@sup-nli:
            cmd: x
            deps:
            - path: data/clean
              md5: ccc.dir
            - path: src/simcse_ops/trainer.py
              md5: code2
            outs:
            - path: models/sup-nli
              md5: model.dir
          train@biomed:
            cmd: y
            deps:
            - path: data/other
              md5: ddd.dir
    """))
    hashes = tracking.dvc_data_hashes(tmp_path, "sup-nli")
    assert hashes == {"shared/data/sts": "aaa.dir", "data/ingested": "bbb.dir", "data/clean": "ccc.dir"}
    tags = tracking.lineage_tags(tmp_path, "sup-nli")
    assert tags["dvc.shared/data/sts"] == "aaa.dir" and tags["variant"] == "sup-nli"
    assert "dvc.data/other" not in tags
    assert tracking.dvc_data_hashes(tmp_path / "nowhere", "x") == {}


def test_lineage_has_git_commit_and_system(project_root):
    tags = tracking.lineage_tags(project_root, "base")
    head = subprocess.run(["git", "-C", str(project_root), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert tags["git.commit"] == head.stdout.strip()
    assert tags["git.dirty"] in ("true", "false")
    assert tags["sys.python"] and tags["sys.torch"] and tags["sys.cpu_count"]


def test_model_hash_covers_every_file_and_not_the_folder_path(tmp_path):
    a, b = tmp_path / "a", tmp_path / "elsewhere" / "b"
    for m in (a, b):
        m.mkdir(parents=True)
        (m / "config.json").write_text("{}")
        (m / "w.bin").write_bytes(b"123")
    h = tracking.model_hash(a)
    assert tracking.model_hash(b) == h  # same files, another place
    (a / "w.bin").write_bytes(b"124")
    assert tracking.model_hash(a) != h
    (b / "mlflow_run.json").write_text('{"run_id": "x"}')  # no file is left out any more
    assert tracking.model_hash(b) != h


def _refused():
    raise requests.exceptions.ConnectionError("Connection refused")


def test_retry_backs_off_exponentially_then_fails_clearly():
    cfg = MlflowConfig(retries=4, backoff_s=0.5, backoff_max_s=3.0)
    waits: list[float] = []
    with pytest.raises(tracking.TrackingUnavailable, match=r"could not create a version after 5 attempts"):
        tracking.retry(_refused, "create a version", cfg, sleep=waits.append, log=lambda m: None)
    assert waits == [0.5, 1.0, 2.0, 3.0]


def test_retry_recovers_and_lets_other_errors_through():
    cfg = MlflowConfig(retries=3, backoff_s=0.0)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            # MLflow's own wrapping of a refused connection
            try:
                _refused()
            except Exception as e:
                raise RuntimeError("API request to http://x failed with exception boom") from e
        return "ok"

    assert tracking.retry(flaky, "x", cfg, sleep=lambda s: None, log=lambda m: None) == "ok"
    assert len(calls) == 3
    with pytest.raises(KeyError):
        tracking.retry(lambda: {}["k"], "x", cfg, sleep=lambda s: None)


def test_training_run_logs_params_steps_and_tags_the_model_hash(store, tmp_path):
    from mlflow import MlflowClient

    root, cfg, _ = store
    with tracking.start_run("unsup-wiki", params={"lr": 3e-5, "corpus": ["wiki1m"]}, root=root, cfg=cfg) as run:
        for step in (10, 20):
            run.log_metrics(step, loss=1.0 / step, sentences_per_s=100.0)
        run.log_metrics(20, dev_spearman=70.5)
        model = tmp_path / "model"
        model.mkdir()
        (model / "config.json").write_text("{}")
        run.tag_model(model)
    client = MlflowClient()
    r = client.get_run(run.run_id)
    assert r.info.status == "FINISHED"
    assert r.data.params == {"lr": "3e-05", "corpus": '["wiki1m"]'}
    assert r.data.tags["variant"] == "unsup-wiki" and "sys.torch" in r.data.tags and "git.commit" in r.data.tags
    losses = client.get_metric_history(run.run_id, "loss")
    assert [(m.step, m.value) for m in losses] == [(10, 0.1), (20, 0.05)]
    assert r.data.tags["model_sha256"] == tracking.model_hash(model)
    assert sorted(p.name for p in model.iterdir()) == ["config.json"]  # nothing written into the model
    exp = client.get_experiment(r.info.experiment_id)
    assert exp.artifact_location == (root / "mlflow" / "artifacts").resolve().as_uri()

    # registration finds the same run through its tags: variant and model hash
    again = tracking.run_for_model("unsup-wiki", model, root, cfg)
    assert again.run_id == run.run_id
    tracking.attach_results(again, "sts", {"stsb": 80.0, "avg": 75.0, "variant": "x"})
    assert client.get_run(run.run_id).data.metrics["sts.avg"] == 75.0

    # another model of the variant is not attributed to it
    (model / "config.json").write_text('{"other": 1}')
    assert tracking.run_for_model("unsup-wiki", model, root, cfg).run_id != run.run_id


def test_failed_training_marks_the_run_failed(store):
    from mlflow import MlflowClient

    root, cfg, _ = store
    with pytest.raises(ZeroDivisionError):
        with tracking.start_run("biomed", params={}, root=root, cfg=cfg) as run:
            1 / 0
    assert MlflowClient().get_run(run.run_id).info.status == "FAILED"


def test_untracked_model_gets_a_new_run(store, tmp_path):
    root, cfg, _ = store
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text('{"x": 1}')
    a = tracking.run_for_model("base", model, root, cfg, params={"method": "pretrained"})
    b = tracking.run_for_model("base", model, root, cfg)
    assert a.run_id == b.run_id  # found again by variant + model hash


def test_disabled_logger_does_nothing(store):
    root, cfg, _ = store
    with tracking.start_run("x", root=root, cfg=cfg, enabled=False) as run:
        run.log_metrics(1, loss=1.0)
        run.tag_model(Path("/nonexistent"))
    assert not run.enabled


def test_log_training_records_curves_summary_and_the_model_hash(store, tmp_path):
    from mlflow import MlflowClient

    root, cfg, _ = store
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    loss = [{"step": s, "epoch": s / 10, "loss": 2.0 / s, "lr": 1e-5} for s in range(1, 1201)]
    dev = [{"step": 600, "dev_score": 80.1}, {"step": 1200, "dev_score": 81.2}]
    run_id = tracking.log_training("sup-nli", {"lr": 5e-5}, loss, dev,
                                   {"sentences_per_s": 950.0, "best_step": 1200, "note": "x"}, model, root, cfg)
    client = MlflowClient()
    hist = client.get_metric_history(run_id, "loss")
    assert len(hist) == 1200 and hist[0].step == 1 and hist[-1].value == pytest.approx(2.0 / 1200)
    assert [m.value for m in client.get_metric_history(run_id, "dev_score")] == [80.1, 81.2]
    r = client.get_run(run_id)
    assert r.data.metrics["sentences_per_s"] == 950.0 and r.data.params["lr"] == "5e-05"
    assert r.data.tags["model_sha256"] == tracking.model_hash(model)
    assert tracking.run_for_model("sup-nli", model, root, cfg).run_id == run_id

    # retraining to the same weights leaves the folder byte-identical (so its DVC hash too), and
    # registration attaches to the newest training run of it
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    again = tracking.log_training("sup-nli", {"lr": 5e-5}, loss[:10], dev[:1], {}, model, root, cfg)
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before == {"config.json": b"{}"}
    assert again != run_id and tracking.run_for_model("sup-nli", model, root, cfg).run_id == again
