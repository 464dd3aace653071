"""A tiny but complete copy of the project in a temporary folder, for end-to-end runs of the flows.

The copy holds the real `stages/`, `dvc.yaml`, `flows/`, `web/` (its node_modules linked) and the
library sources DVC tracks as deps (the package itself is imported from the editable install), a
git repository with `dvc init`, a `params.yaml` derived from the project's own (same sections,
tiny sizes: the tiny random BERT as base model, two training steps, one SEAT test), and a data
root with a few records of each real source file, cut from the shared data in its original format
(STS pairs with their gold lines, the first PubMedQA abstracts, one SEAT test with a few examples
per set).
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

# Sources the tiny pipeline needs: the 7 STS tasks, the domain corpus, a domain evaluation set
# (Medical Question Pairs), SEAT for the bias stage.
KEEP_SOURCES = ("sts12", "sts13", "sts14", "sts15", "sts16", "stsb", "sick", "sick_full", "pubmedqa", "mqp", "seat")
MQP_PAIRS = 60        # first pairs of mqp.csv (30 original questions, split dev/test by question)
STS_PAIRS = 12        # scored pairs per STS input file / lines per split file
PUBMED_ABSTRACTS = 4  # abstracts in the first domain file (about 40 sentences)
SEAT_TEST = "sent-weat1"
SEAT_EXAMPLES = 6     # examples per target / attribute set


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _cut_semeval(src_input: Path, dst_input: Path) -> None:
    """The first STS_PAIRS scored pairs of an `STS.input.X.txt` and the same lines of its gold."""
    name = src_input.name.replace(".input.", ".gs.")
    src_gold = src_input.with_name(name)
    inputs, gold = _lines(src_input), _lines(src_gold)
    keep = [i for i, g in enumerate(gold) if g.strip()][:STS_PAIRS]
    dst_input.parent.mkdir(parents=True, exist_ok=True)
    dst_input.write_bytes(b"".join(inputs[i] for i in keep))
    dst_input.with_name(name).write_bytes(b"".join(gold[i] for i in keep))


def _cut_head(src: Path, dst: Path, n: int, header: int = 0) -> None:
    lines = _lines(src)
    body = lines[: header + n]
    if body and not body[-1].endswith(b"\n"):
        body[-1] += b"\r\n" if body[0].endswith(b"\r\n") else b"\n"
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(b"".join(body))


def _cut_sick_full(src: Path, dst: Path) -> None:
    """Header + STS_PAIRS rows of each SemEval_set (TRAIN, TRIAL, TEST) of SICK.txt (CRLF kept)."""
    lines = _lines(src)
    header = lines[0]
    col = header.decode().rstrip("\r\n").split("\t").index("SemEval_set")
    per: dict[str, list[bytes]] = {}
    for line in lines[1:]:
        s = line.decode().rstrip("\r\n").split("\t")[col]
        if len(per.setdefault(s, [])) < STS_PAIRS:
            per[s].append(line if line.endswith(b"\n") else line + b"\r\n")
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(header + b"".join(r for rows in per.values() for r in rows))


def write_pubmedqa(dst: Path, abstracts: dict) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(json.dumps(abstracts), encoding="utf-8")


def pubmedqa_abstracts(data_src: Path, start: int, n: int) -> dict:
    """Abstracts start..start+n of the real PubMedQA PQA-L file (keyed by PMID)."""
    full = json.loads((data_src / "domain/biomedical/pubmedqa_pqal/ori_pqal.json").read_text())
    pmids = list(full)[start : start + n]
    return {p: full[p] for p in pmids}


def make_tiny_data(data_src: Path, dst: Path, params: dict) -> None:
    """Cut the kept sources' real files into `dst`, at the same relative paths."""
    sources = params["sources"]
    for name in ("sts12", "sts13", "sts14", "sts15", "sts16"):
        for rel in sources[name]["paths"]:
            _cut_semeval(data_src / rel, dst / rel)
    for rel in sources["stsb"]["paths"]:
        _cut_head(data_src / rel, dst / rel, STS_PAIRS)
    for rel in sources["sick"]["paths"]:
        _cut_head(data_src / rel, dst / rel, STS_PAIRS, header=1)
    for rel in sources["sick_full"]["paths"]:
        _cut_sick_full(data_src / rel, dst / rel)
    write_pubmedqa(dst / "domain/biomedical/pubmedqa_pqal/ori_pqal.json",
                   pubmedqa_abstracts(data_src, 0, PUBMED_ABSTRACTS))
    for rel in sources["mqp"]["paths"]:
        _cut_head(data_src / rel, dst / rel, MQP_PAIRS)
    seat = json.loads((data_src / f"bias/sent-bias/tests/{SEAT_TEST}.jsonl").read_text())
    for part in seat.values():
        part["examples"] = part["examples"][:SEAT_EXAMPLES]
    (dst / "bias/sent-bias/tests").mkdir(parents=True, exist_ok=True)
    (dst / f"bias/sent-bias/tests/{SEAT_TEST}.jsonl").write_text(json.dumps(seat, indent=2))
    # dvc.yaml's ingest stage depends on these folders; the tiny configuration reads nothing there.
    for folder in ("corpus", "nli"):
        (dst / folder).mkdir(parents=True, exist_ok=True)
        (dst / folder / "README.txt").write_text("not used by the tiny configuration\n")


def tiny_params(real: dict, data_root: Path, model_dir: Path) -> dict:
    """The project's params.yaml, cut down: same sections and keys, tiny sizes."""
    p = copy.deepcopy(real)
    p["data"]["root"] = str(data_root)
    p["sources"] = {k: v for k, v in p["sources"].items() if k in KEEP_SOURCES}
    # every tiny abstract is trained on (no official test file in the tiny data root)
    p["sources"]["pubmedqa"]["options"] = {k: v for k, v in p["sources"]["pubmedqa"].get("options", {}).items()
                                           if k != "splits"}
    p["evaluate"]["domain_tasks"] = {"mqp": {"source": "mqp", "metric": "ap"}}
    p["evaluate"]["bootstrap"] = {"n_resamples": 200, "confidence": 0.95, "seed": 0}
    p["sources"]["seat"]["paths"] = [f"bias/sent-bias/tests/{SEAT_TEST}.jsonl"]
    p["evaluate"].update(batch_size=32, device="cpu")
    p["bias"].update(tests=[SEAT_TEST], n_samples=200, batch_size=32, device="cpu")
    if "validate" in p:
        # Exact row counts are the published ones; the tiny cut has its own.
        p["validate"]["sts"]["row_counts"] = {"severity": "warning", "expected": {}}
        for kind in ("corpus", "nli"):
            for check in p["validate"].get(kind, {}).values():
                if isinstance(check, dict) and check.get("severity") == "critical" and "min" in check:
                    check["min"] = 1
    if "dedup" in p:
        p["dedup"]["max_removed_fraction"] = 0.9
    tiny_variant = {
        "base_model": str(model_dir), "pooler": "avg", "batch_size": 8, "lr": 1e-4, "epochs": 1,
        "max_steps": 2, "eval_steps": 0, "checkpoint_steps": 0, "max_seq_length": 16,
        "precision": "fp32",
    }
    p["variants"] = {
        "base": {"method": "pretrained", "base_model": str(model_dir), "pooler": "avg",
                 "description": "tiny random BERT, untrained", "domain_tasks": ["mqp"]},
        "biomed": {"method": "unsup", "corpus": ["pubmedqa"], **tiny_variant,
                   "description": "tiny domain variant", "domain_tasks": ["mqp"], "primary_task": "mqp"},
    }
    p["flows"] = {**p.get("flows", {}), "retries": 0, "mlflow_ui": "http://127.0.0.1:5000"}
    return p


def tiny_data_root(project: Path) -> Path:
    """The tiny project's data root (beside it, outside the repository, like ../shared/data)."""
    return project.parent / f"{project.name}-data"


def make_tiny_project(project_root: Path, dest: Path, data_src: Path, model_dir: Path) -> Path:
    """Build the tiny project at `dest` (a git + DVC repository with one commit); returns `dest`."""
    dest.mkdir(parents=True)
    for folder in ("stages", "flows", "src"):
        shutil.copytree(project_root / folder, dest / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy2(project_root / "dvc.yaml", dest / "dvc.yaml")
    shutil.copy2(project_root / ".gitignore", dest / ".gitignore")
    # The validate stage copies the browser libraries into Data Docs (a dep: web/package-lock.json);
    # the installed ones are shared, not copied (ignored by git).
    shutil.copytree(project_root / "web", dest / "web", ignore=shutil.ignore_patterns("node_modules"))
    if (project_root / "web" / "node_modules").is_dir():
        (dest / "web" / "node_modules").symlink_to(project_root / "web" / "node_modules")
    real = yaml.safe_load((project_root / "params.yaml").read_text())
    data_root = tiny_data_root(dest)
    params = tiny_params(real, data_root, model_dir)
    make_tiny_data(data_src, data_root, params)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def run(*args: str) -> None:
        subprocess.run(args, cwd=dest, check=True, capture_output=True)

    run("git", "init", "-q")
    run("git", "config", "user.email", "e2e@example.invalid")
    run("git", "config", "user.name", "e2e")
    run(sys.executable, "-m", "dvc", "init", "-q")
    shutil.copy2(project_root / ".dvc" / "config", dest / ".dvc" / "config")  # the offline plots template
    run("git", "add", "-A")
    run("git", "commit", "-q", "-m", "tiny project")
    return dest
