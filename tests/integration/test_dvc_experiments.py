"""DVC as its users expect it, on a tiny copy of the project (real DVC, real MLflow store):

1. a new file in one domain's folder reruns only the stages that read it: every stage of the
   other trained variant (and base's) stays up to date in `dvc status`, and
   `python -m flows.retrain biomed` runs only biomed's chain and the shared upstream;
2. `dvc exp run` trains, evaluates and gates, tracked in MLflow with the experiment's name and
   baseline commit, but registers nothing and moves no alias;
3. a queued sweep (`dvc exp run --queue -S 'variants.biomed.lr=...'`, `dvc queue start`) runs each
   experiment in DVC's copies of the repository (with the data root relative to the project, as
   ../shared/data is) and `dvc exp show` lists each with its params, STS average and primary
   domain metric; the registry stays untouched.

The tiny project (tests/integration/tiny_project.py) gets a second trained variant, `general`
(unsupervised on a few wiki1m lines), so that "the other variant" is one that trains. The tests
share one project and run in file order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.integration.tiny_project import (
    PUBMED_ABSTRACTS, make_tiny_project, pubmedqa_abstracts, tiny_data_root, write_pubmedqa,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WIKI_LINES = 48
STAGES = ("train", "export", "evaluate", "bias", "register")


def _run(project: Path, *args: str, env: dict | None = None, timeout: float = 900) -> str:
    r = subprocess.run(args, cwd=project, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    assert r.returncode == 0, f"{' '.join(args)} failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r.stdout


def _dvc(project: Path, *args: str, timeout: float = 900) -> str:
    return _run(project, sys.executable, "-m", "dvc", *args, timeout=timeout)


def _git(project: Path, *args: str) -> str:
    return _run(project, "git", *args)


def _stale(project: Path) -> set[str]:
    """The stages `dvc status` lists (changed deps, outs, params or command)."""
    return set(json.loads(_dvc(project, "status", "--json") or "{}"))


def _registry(project: Path) -> dict[str, tuple[list[int], dict[str, int]]]:
    """{model: (versions, {alias: version})} of the project's embedded store."""
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{project / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    out = {}
    for m in client.search_registered_models():
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{m.name}'"))
        out[m.name] = (versions, {a: int(v) for a, v in (m.aliases or {}).items()})
    return out


def _runs_tagged(project: Path, key: str, value: str) -> list:
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{project / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    exps = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exps, filter_string=f"tags.`{key}` = '{value}'")


@pytest.fixture(scope="module")
def project(tmp_path_factory, project_root, data_root, tiny_model_dir) -> Path:
    """The tiny project with a second trained variant and a relative data root, after a full
    `dvc repro` committed (a clean workspace: champions set)."""
    proj = make_tiny_project(project_root, tmp_path_factory.mktemp("dvcexp") / "proj", data_root, tiny_model_dir)
    real = yaml.safe_load((project_root / "params.yaml").read_text())
    params = yaml.safe_load((proj / "params.yaml").read_text())
    wiki = real["sources"]["wiki1m"]
    src = data_root / wiki["paths"][0]
    with src.open("rb") as f:
        head = b"".join(next(f) for _ in range(WIKI_LINES))
    dst = tiny_data_root(proj) / wiki["paths"][0]
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(head)
    params["sources"] = {"wiki1m": wiki, **params["sources"]}
    biomed = params["variants"]["biomed"]
    params["variants"]["general"] = {
        **{k: v for k, v in biomed.items() if k not in ("domain_tasks", "primary_task", "corpus", "description")},
        "corpus": ["wiki1m"], "description": "tiny general variant"}
    # relative, and outside the repository, like ../shared/data
    params["data"]["root"] = os.path.relpath(tiny_data_root(proj), proj)
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _git(proj, "commit", "-qam", "a general variant; a relative data root")
    _dvc(proj, "repro")
    _git(proj, "add", "-A")
    _git(proj, "commit", "-qm", "dvc repro")
    assert _stale(proj) == set()
    return proj


def test_new_domain_file_reruns_only_the_stages_that_read_it(project, data_root):
    clean_before = {p.name: p.read_bytes() for p in (project / "data/clean").glob("*.parquet")}
    registry_before = _registry(project)
    write_pubmedqa(tiny_data_root(project) / "domain/biomedical/pubmedqa_pqal/ori_pqal_2026.json",
                   pubmedqa_abstracts(data_root, PUBMED_ABSTRACTS, 4))
    _dvc(project, "repro", "ingest", "dedup", "validate", "inputs")
    clean_after = {p.name: p.read_bytes() for p in (project / "data/clean").glob("*.parquet")}
    assert clean_after["wiki1m.parquet"] == clean_before["wiki1m.parquet"]
    assert clean_after["pubmedqa.parquet"] != clean_before["pubmedqa.parquet"]

    stale = _stale(project)
    for stage in STAGES:
        assert f"{stage}@general" not in stale, stale
        assert f"{stage}@base" not in stale, stale  # base scores STS and mqp, not PubMedQA
    assert "train@biomed" in stale and "report" in stale, stale

    # the retrain flow (no server): biomed's chain ran, nothing of the other variants did
    out = _run(project, sys.executable, "-m", "flows.retrain", "biomed", timeout=1200)
    report = json.loads(out[out.rindex('{\n  "domain"'):])
    ran = {t for t, s in report["stages"].items() if s == "ran"}
    assert {"train@biomed", "evaluate@biomed", "register@biomed"} <= ran, report["stages"]
    assert not {t for t in ran if t.endswith(("@general", "@base"))}, report["stages"]
    assert ran <= {"ingest", "dedup", "validate", "inputs", "report", *(f"{s}@biomed" for s in STAGES)}, ran
    after = _registry(project)
    assert after["simcse-general"] == registry_before["simcse-general"]
    assert after["simcse-base"] == registry_before["simcse-base"]
    assert after["simcse-biomed"][0] == [*registry_before["simcse-biomed"][0], max(registry_before["simcse-biomed"][0]) + 1]
    _git(project, "add", "-A")
    _git(project, "commit", "-qm", "biomed retrained on new data")


def test_an_experiment_registers_nothing(project):
    before = _registry(project)
    baseline = _git(project, "rev-parse", "HEAD").strip()
    _dvc(project, "exp", "run", "-n", "bigger-batches", "-S", "serve.max_batch=128")
    assert _registry(project) == before  # no version, no alias moved, on any model
    for variant in ("base", "general", "biomed"):
        reg = json.loads((project / f"metrics/{variant}/registry.json").read_text())
        assert reg["registered"] is False and reg["version"] is None
        assert reg["decision"] == "experiment: not registered"
        assert reg["experiment"] == {"name": "bigger-batches", "baseline_rev": baseline}
        assert reg["gate"]["decision"] in ("promote", "reject")
        runs = [r for r in _runs_tagged(project, "dvc.exp_name", "bigger-batches")
                if r.data.tags.get("variant") == variant]
        assert len(runs) == 1 and runs[0].info.run_id == reg["run_id"]
        assert runs[0].data.tags["dvc.exp_baseline_rev"] == baseline
        assert runs[0].data.tags["gate.decision"] == reg["gate"]["decision"]
        assert "sts.avg" in runs[0].data.metrics
    # `dvc exp run` is `dvc repro` + `dvc exp save`: the experiment's results stay in the workspace
    # (params.yaml, dvc.lock, metrics, the report) until the user goes back to the commit
    assert "serve" in _dvc(project, "params", "diff")
    _git(project, "checkout", "--", ".")
    _dvc(project, "checkout")
    assert _stale(project) == set(), _dvc(project, "status")
    _dvc(project, "exp", "remove", "bigger-batches")


def test_a_dirty_workspace_registers_but_never_promotes(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["serve"]["max_batch"] = 64
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _, aliases = _registry(project)["simcse-general"]
    _dvc(project, "repro", "register@general")
    versions, aliases_after = _registry(project)["simcse-general"]
    reg = json.loads((project / "metrics/general/registry.json").read_text())
    assert reg["registered"] is True and reg["version"] == max(versions)
    assert aliases_after.get("champion") == aliases.get("champion") and aliases_after["challenger"] == reg["version"]
    assert reg["decision"] in ("held", "reject")
    if reg["decision"] == "held":
        assert any(r.startswith("held: ") and "params.yaml" in r for r in reg["reasons"]), reg["reasons"]
    _git(project, "checkout", "--", ".")  # back to the committed state: its dvc.lock, params.yaml, metrics
    assert _stale(project) == set(), _dvc(project, "status") + _git(project, "status", "--short")


def test_a_queued_sweep_runs_and_is_listed(project):
    before = _registry(project)
    _dvc(project, "exp", "run", "--queue", "-S", "variants.biomed.lr=1e-5,3e-5")
    _dvc(project, "queue", "start", "-j", "1")
    try:
        deadline = time.monotonic() + 1500
        while any(s in ("Queued", "Running") for s in _queue_states(project).values()):
            assert time.monotonic() < deadline, _dvc(project, "queue", "status")
            time.sleep(5)
    finally:
        _dvc(project, "queue", "stop")
    states = _queue_states(project)
    assert list(states.values()) == ["Success", "Success"], {
        n: _dvc(project, "queue", "logs", n)[-3000:] for n, s in states.items() if s != "Success"}
    rows = json.loads(_dvc(project, "exp", "show", "--json"))
    exps = [e for base in rows for e in (base.get("experiments") or [])]
    lrs = {}
    for e in exps:
        for rev in e["revs"]:
            data = rev.get("data") or {}
            assert rev.get("error") is None, rev
            lr = data["params"]["params.yaml"]["data"]["variants"]["biomed"]["lr"]
            metrics = data["metrics"]
            sts = metrics["metrics/biomed/sts.json"]["data"]["avg"]
            primary = metrics["metrics/biomed/domain.json"]["data"]["primary_metric"]
            lrs[lr] = (sts, primary["metric"], primary["value"])
    assert set(lrs) == {1e-5, 3e-5}, rows
    for sts, metric, value in lrs.values():
        assert isinstance(sts, float) and metric == "ap" and isinstance(value, float)
    assert _registry(project) == before


def _queue_states(project: Path) -> dict[str, str]:
    """{experiment name: Queued | Running | Success | Failed} from `dvc queue status`."""
    out = _dvc(project, "queue", "status")
    rows = [line.split() for line in out.splitlines()[1:]]
    return {r[1]: r[-1] for r in rows if len(r) >= 4 and r[-1] in ("Queued", "Running", "Success", "Failed")}
