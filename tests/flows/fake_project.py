"""A small real DVC project whose stages are stand-ins for the real ones (same names, same outputs).

The flows only order DVC stages, so their tests need real DVC and real Prefect but not real models:
each stand-in stage is a few lines of `fake_stage.py` that writes what the real stage writes
(`metrics/V/sts.json`, `metrics/V/registry.json`, ...) and appends its name to `calls.log`, so a test
can see which stages DVC actually ran.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

TASKS = ["sts12", "sts13", "sts14", "sts15", "sts16", "stsb", "sickr"]

FAKE_STAGE = r'''
"""Stand-in stages: python fake_stage.py STAGE [VARIANT]"""
import json, os, pathlib, sys, time

stage = sys.argv[1]
variant = sys.argv[2] if len(sys.argv) > 2 else None
root = pathlib.Path(".")
with open("calls.log", "a") as f:
    f.write(f"{stage}@{variant}\n" if variant else f"{stage}\n")
print(f"fake {stage} running for {variant or 'all'}")
print(f"fake {stage}: a warning on stderr", file=sys.stderr)


def write(path, obj):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)


if os.environ.get("FAKE_STAGE_FAIL") == stage:
    print("Traceback (most recent call last):", file=sys.stderr)
    print(f"ValueError: {stage} exploded on purpose", file=sys.stderr)
    sys.exit(3)
if stage == "ingest":
    files = sorted(str(p) for p in pathlib.Path("raw/domain").rglob("*.json"))
    write("data/ingested/pubmedqa.json", files)
elif stage == "dedup":
    write("data/clean/pubmedqa.json", (root / "data/ingested/pubmedqa.json").read_text())
elif stage == "validate":
    write("metrics/validate.json", {"success": True})
elif stage == "train":
    write(f"models/{variant}/model.txt", (root / "data/clean/pubmedqa.json").read_text())
elif stage == "evaluate":
    n = len(json.loads((root / f"models/{variant}/model.txt").read_text()))
    scores = {t: 70.0 + n + i for i, t in enumerate(%(tasks)r)}
    scores["avg"] = round(sum(scores.values()) / len(scores), 2)
    write(f"metrics/{variant}/sts.json", scores)
elif stage == "bias":
    write(f"metrics/{variant}/bias.json", {"mean_abs_effect_size": 0.1})
elif stage == "register":
    state = pathlib.Path("registry-state.json")
    versions = json.loads(state.read_text()) if state.exists() else {}
    version = versions.get(variant, 0) + 1
    versions[variant] = version
    state.write_text(json.dumps(versions))
    avg = json.loads((root / f"metrics/{variant}/sts.json").read_text())["avg"]
    write(f"metrics/{variant}/registry.json", {
        "name": f"simcse-{variant}", "version": version, "decision": "promote", "promoted": True,
        "compared_to": "base", "reasons": [f"ok: avg {avg} beats base"], "champion": version,
        "run_id": f"run{version}", "model_sha256": "0" * 64,
    })
'''.replace("%(tasks)r", repr(TASKS))

DVC_YAML = """
stages:
  ingest:
    cmd: python fake_stage.py ingest
    deps: [fake_stage.py, "${data.root}/domain"]
    outs: [data/ingested]
  dedup:
    cmd: python fake_stage.py dedup
    deps: [data/ingested]
    outs: [data/clean]
  validate:
    cmd: python fake_stage.py validate
    deps: [data/clean]
    metrics: [{metrics/validate.json: {cache: false}}]
  train:
    foreach: ${variants}
    do:
      cmd: python fake_stage.py train ${key}
      deps: [data/clean]
      params: ["variants.${key}"]
      outs: ["models/${key}"]
  evaluate:
    foreach: ${variants}
    do:
      cmd: python fake_stage.py evaluate ${key}
      deps: ["models/${key}"]
      metrics: [{"metrics/${key}/sts.json": {cache: false}}]
  bias:
    foreach: ${variants}
    do:
      cmd: python fake_stage.py bias ${key}
      deps: ["models/${key}"]
      metrics: [{"metrics/${key}/bias.json": {cache: false}}]
  register:
    foreach: ${variants}
    do:
      cmd: python fake_stage.py register ${key}
      deps: ["models/${key}", "metrics/${key}/sts.json", "metrics/${key}/bias.json",
             metrics/base/sts.json]
      metrics: [{"metrics/${key}/registry.json": {cache: false}}]
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
