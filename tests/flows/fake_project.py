"""A small real DVC project whose stages are stand-ins for the real ones (same names, same files).

The flows only order DVC stages, so their tests need real DVC and real Prefect but not real models:
each stand-in stage is a few lines of `fake_stage.py` that writes what the real stage writes
(`sts.json`, `domain.json`, `registry.json`, ...) and appends its name to `calls.log`, so a test
can see which stages DVC actually ran.

As in the real project, every path lives in dvc.yaml only: the stage commands pass them to
`fake_stage.py` (`name=path` arguments), and the flows find the files they read (`sts.json` and
`domain.json` of evaluate@V, `registry.json` of register@V) where dvc.yaml declares them. The
per-variant results lie under `results/V/`, not the real project's `metrics/V/`: a flow that built
`metrics/V/...` itself would find nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

TASKS = ["sts12", "sts13", "sts14", "sts15", "sts16", "stsb", "sickr"]
DOMAIN_TASK = "pubmedqa_conclusion"  # the one domain task the stand-in evaluate scores for biomed

FAKE_STAGE = r'''
"""Stand-in stages: python fake_stage.py STAGE [VARIANT] [name=path ...] (paths from dvc.yaml)"""
import json, os, pathlib, sys

stage = sys.argv[1]
variant = next((a for a in sys.argv[2:] if "=" not in a), None)
path = dict(a.split("=", 1) for a in sys.argv[2:] if "=" in a)
with open("calls.log", "a") as f:
    f.write(f"{stage}@{variant}\n" if variant else f"{stage}\n")
print(f"fake {stage} running for {variant or 'all'}")
print(f"fake {stage}: a warning on stderr", file=sys.stderr)


def read(p):
    return pathlib.Path(p).read_text()


def write(p, obj):
    p = pathlib.Path(p)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)


def domain_summary(n):
    if variant != "biomed":
        return {"variant": variant, "primary": None, "tasks": {}}
    res = lambda v: {"metrics": {"ndcg@10": v}, "ci": {"ndcg@10": [v - 1.0, v + 1.0]}}
    results = {"bm25": res(40.0), "base": res(45.0), variant: res(50.0 + n)}
    return {"variant": variant, "primary": %(task)r,
            "tasks": {%(task)r: {"metric": "ndcg@10", "n": n, "results": results}}}


if os.environ.get("FAKE_STAGE_FAIL") == stage:
    print("Traceback (most recent call last):", file=sys.stderr)
    print(f"ValueError: {stage} exploded on purpose", file=sys.stderr)
    sys.exit(3)
if stage == "ingest":
    files = sorted(str(p) for p in pathlib.Path(path["raw"]).rglob("*.json"))
    write(f"{path['out']}/pubmedqa.json", files)
elif stage == "dedup":
    write(f"{path['out']}/pubmedqa.json", read(f"{path['data']}/pubmedqa.json"))
elif stage == "validate":
    write(path["metrics"], {"success": True, "run_name": os.environ.get("SIMCSE_OPS_RUN_NAME")})
elif stage == "train":
    write(f"{path['out']}/model.txt", read(f"{path['data']}/pubmedqa.json"))
elif stage == "evaluate":
    n = len(json.loads(read(f"{path['model']}/model.txt")))
    scores = {t: 70.0 + n + i for i, t in enumerate(%(tasks)r)}
    scores["avg"] = round(sum(scores.values()) / len(scores), 2)
    write(path["sts"], scores)
    write(path["domain"], domain_summary(n))
elif stage == "bias":
    write(path["out"], {"mean_abs_effect_size": 0.1})
elif stage == "register":
    state = pathlib.Path("registry-state.json")
    versions = json.loads(state.read_text()) if state.exists() else {}
    version = versions.get(variant, 0) + 1
    versions[variant] = version
    state.write_text(json.dumps(versions))
    avg = json.loads(read(path["sts"]))["avg"]
    # a real MLflow run in the workspace's embedded store: the flows attach dvc.lock to it
    from mlflow import MlflowClient
    from simcse_ops import tracking
    from simcse_ops.config import MlflowConfig
    tracking.configure(pathlib.Path.cwd(), MlflowConfig())
    client = MlflowClient()
    run = client.create_run(tracking.get_experiment_id(client, pathlib.Path.cwd(), MlflowConfig()))
    client.set_terminated(run.info.run_id)
    write(path["out"], {
        "name": f"simcse-{variant}", "version": version, "decision": "promote", "promoted": True,
        "compared_to": "base", "reasons": [f"ok: avg {avg} beats base"], "champion": version,
        "run_id": run.info.run_id, "experiment_id": run.info.experiment_id, "model_sha256": "0" * 64,
        "domain": {%(task)r: {"metric": "ndcg@10", "champion": 48.25}},
    })
'''.replace("%(tasks)r", repr(TASKS)).replace("%(task)r", repr(DOMAIN_TASK))

DVC_YAML = """
stages:
  ingest:
    cmd: python fake_stage.py ingest raw=${data.root}/domain out=data/ingested
    deps: [fake_stage.py, "${data.root}/domain"]
    outs: [data/ingested]
  dedup:
    cmd: python fake_stage.py dedup data=data/ingested out=data/clean
    deps: [data/ingested]
    outs: [data/clean]
  validate:
    cmd: python fake_stage.py validate metrics=results/validate.json
    deps: [data/clean]
    metrics: [{results/validate.json: {cache: false}}]
  train:
    foreach: ${variants}
    do:
      cmd: python fake_stage.py train ${key} data=data/clean out=models/${key}
      deps: [data/clean]
      params: ["variants.${key}"]
      outs: ["models/${key}"]
  evaluate:
    foreach: ${variants}
    do:
      cmd: >-
        python fake_stage.py evaluate ${key} model=models/${key}
        sts=results/${key}/sts.json domain=results/${key}/domain.json
      deps: ["models/${key}"]
      metrics:
        - {"results/${key}/sts.json": {cache: false}}
        - {"results/${key}/domain.json": {cache: false}}
  bias:
    foreach: ${variants}
    do:
      cmd: python fake_stage.py bias ${key} model=models/${key} out=results/${key}/bias.json
      deps: ["models/${key}"]
      metrics: [{"results/${key}/bias.json": {cache: false}}]
  register:
    foreach: ${variants}
    do:
      cmd: >-
        python fake_stage.py register ${key} sts=results/${key}/sts.json
        out=results/${key}/registry.json
      deps: ["models/${key}", "results/${key}/sts.json", "results/${key}/bias.json",
             "results/${register.base_variant}/sts.json"]
      metrics: [{"results/${key}/registry.json": {cache: false}}]
"""


def params_dict(retries: int = 0) -> dict:
    src = {"format": "semeval_sts", "role": "eval-sts", "paths": ["sts/*.txt"]}
    return {
        "data": {"root": "raw"},
        "ingest": {},
        "sources": {
            "sts": src,
            "wiki": {"format": "lines", "role": "train-unsup", "paths": ["corpus/*.txt"]},
            "pubmedqa": {"format": "pubmedqa_json", "role": "domain",
                         "paths": ["domain/biomedical/ori_pqal*.json"]},
        },
        "evaluate": {"tasks": {t: {"source": "sts"} for t in TASKS}},
        "register": {"base_variant": "base"},  # dvc.yaml: register@V reads the base's sts.json
        "variants": {
            "base": {"method": "pretrained"},
            "wiki": {"method": "unsup", "corpus": ["wiki"]},
            "biomed": {"method": "unsup", "corpus": ["pubmedqa"]},
        },
        "flows": {"retries": retries, "retry_delay_seconds": 0, "retry_jitter_factor": 0,
                  "stderr_tail_lines": 5, "mlflow_ui": "http://mlflow.test:5000"},
    }


def make_fake_project(root: Path, retries: int = 0) -> Path:
    """A git + DVC repository at `root` with the stand-in stages; returns `root`."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "fake_stage.py").write_text(FAKE_STAGE)
    (root / "dvc.yaml").write_text(textwrap.dedent(DVC_YAML))
    (root / "params.yaml").write_text(yaml.safe_dump(params_dict(retries), sort_keys=False))
    domain = root / "raw" / "domain" / "biomedical"
    domain.mkdir(parents=True)
    (domain / "ori_pqal.json").write_text(json.dumps({"1": {"QUESTION": "q?"}}))
    for sub in ("sts", "corpus"):
        (root / "raw" / sub).mkdir()
        (root / "raw" / sub / "a.txt").write_text("x\n")
    run = lambda *a: subprocess.run(a, cwd=root, check=True, capture_output=True)  # noqa: E731
    run("git", "init", "-q")
    run(sys.executable, "-m", "dvc", "init", "-q")
    return root


def calls(root: Path) -> list[str]:
    path = root / "calls.log"
    return path.read_text().split() if path.exists() else []
