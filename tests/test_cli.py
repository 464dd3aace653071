"""The `simcse-ops` command line, run as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from simcse_ops.cli import main
from simcse_ops.errors import EXIT_DATA

PAIRS = (
    "sentence1\tsentence2\tscore\n"
    "A man is playing a guitar.\tA person plays the guitar.\t4.6\n"
    "A man is playing a guitar.\tThe stock market fell sharply today.\t0.1\n"
    "A woman is slicing an onion.\tSomeone is cutting an onion.\t4.2\n"
    "A dog runs in the park.\tA cat sleeps on the sofa.\t1.0\n"
    "Two kids play football outside.\tChildren are playing soccer outdoors.\t4.4\n"
)


def test_sts_command_on_tiny_model(tmp_path, tiny_model_dir, capsys):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text(PAIRS, encoding="utf-8")
    assert main(["sts", "--model", str(tiny_model_dir), "--pairs", str(pairs)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out) == {"spearman", "pearson", "n"}
    assert out["n"] == 5
    assert -100.0 <= out["spearman"] <= 100.0


def test_sts_command_bad_file_is_a_clear_error(tmp_path, tiny_model_dir, capsys):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("sentence1\tsentence2\tscore\nA\tB\tfive\n", encoding="utf-8")
    assert main(["sts", "--model", str(tiny_model_dir), "--pairs", str(pairs)]) == 3  # DataError
    assert f"{pairs}:2: found score 'five'; expected a number" in capsys.readouterr().err


def test_sts_command_missing_model_folder(tmp_path, capsys):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text(PAIRS, encoding="utf-8")
    assert main(["sts", "--model", str(tmp_path / "no-model"), "--pairs", str(pairs)]) == EXIT_DATA  # a missing input
    err = capsys.readouterr().err
    assert err == f"simcse-ops sts: error: {tmp_path / 'no-model'}: no such model folder\n", err


@pytest.mark.slow
def test_sts_command_default_encoder_console_script(tmp_path):
    """The installed console script with the bundled default encoder, on a hand-written file."""
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text(PAIRS, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "simcse_ops.cli", "sts", "--model", "default", "--pairs", str(pairs)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["n"] == 5
    # a real encoder ranks these hand-written pairs almost perfectly
    assert out["spearman"] >= 80.0


def test_help_loads_neither_mlflow_nor_torch():
    """`simcse-ops --help` stays fast: the registry commands load mlflow only when they run."""
    code = ("import sys\nfrom simcse_ops.cli import build_parser\nbuild_parser()\n"
            "print(sorted(m for m in ('mlflow', 'torch', 'sentence_transformers') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_promote_default_base_metrics_is_the_one_dvc_yaml_declares(tmp_path, project_root):
    from simcse_ops.cli import declared_base_metrics
    from simcse_ops.config import load_params

    params = load_params(project_root / "params.yaml")
    base = params.register.base_variant
    # the project's register stage: --base-metrics metrics/${register.base_variant}
    assert declared_base_metrics(project_root / "params.yaml", params, "biomed") == project_root / "metrics" / base
    # whatever dvc.yaml says, ${key} being the variant
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  register:\n    foreach: ${variants}\n    do:\n"
        "      cmd: python -m stages.register --variant ${key} --base-metrics ref/${register.base_variant}-${key}\n"
    )
    assert declared_base_metrics(tmp_path / "params.yaml", params, "biomed") == tmp_path / "ref" / f"{base}-biomed"
    (tmp_path / "dvc.yaml").write_text("stages:\n  register:\n    cmd: python -m stages.register\n")
    assert declared_base_metrics(tmp_path / "params.yaml", params, "biomed") is None
    (tmp_path / "dvc.yaml").unlink()
    assert declared_base_metrics(tmp_path / "params.yaml", params, "biomed") is None
