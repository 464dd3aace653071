"""The training loop: data, schedule, dev scorers, full stage runs (sup, pairs), SIGKILL + resume, and
torchrun DDP."""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from simcse_ops import schemas
from simcse_ops.files import DataError
from simcse_ops.trainer import encode_rows, linear_schedule
from simcse_ops.training_data import (
    epoch_permutation,
    length_groups,
    load_training_texts,
    pad_rows,
    tokenize_column,
)

WORDS = ("the a cat dog man woman child runs sleeps eats plays sings red blue big small old house car "
         "tree river city park guitar ball").split()


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40))) + "."


def write_data(folder: Path, n: int = 240, n_dev: int = 40) -> Path:
    """Small CORPUS (wiki1m), NLI (snli) and STS (stsb dev) parquet files in ingest's schemas."""
    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    lines = list(range(1, n + 1))
    pq.write_table(pa.table({"text": [_sentence(rng) for _ in range(n)], "doc": [""] * n, "file": ["w"] * n,
                             "line": lines}, schema=schemas.CORPUS), folder / "wiki1m.parquet")
    pq.write_table(pa.table({"anchor": [_sentence(rng) for _ in range(n)], "positive": [_sentence(rng) for _ in range(n)],
                             "negative": [_sentence(rng) for _ in range(n)], "file": ["s"] * n, "line": lines},
                            schema=schemas.NLI), folder / "snli.parquet")
    pq.write_table(pa.table({"split": ["dev"] * n_dev, "subset": ["x"] * n_dev,
                             "sentence1": [_sentence(rng) for _ in range(n_dev)],
                             "sentence2": [_sentence(rng) for _ in range(n_dev)],
                             "score": [rng.uniform(0, 5) for _ in range(n_dev)], "file": ["b"] * n_dev,
                             "line": list(range(1, n_dev + 1))}, schema=schemas.STS), folder / "stsb.parquet")
    return folder


def write_pairs(folder: Path, n: int = 240) -> Path:
    """A text_pairs source `toy_pairs`: each positive is its anchor with one word dropped."""
    rng = random.Random(1)
    anchors = [_sentence(rng) for _ in range(n)]
    positives = [" ".join(w for j, w in enumerate(a.split()) if j != 1) for a in anchors]
    pq.write_table(pa.table({"anchor": anchors, "positive": positives, "doc": [f"d{i}" for i in range(n)],
                             "file": ["p"] * n, "line": list(range(1, n + 1))}), folder / "toy_pairs.parquet")
    return folder


# A variant of method pairs and its source, for params.yaml files written by the tests.
PAIRS_VARIANT = {"method": "pairs", "corpus": ["toy_pairs"], "pooler": "avg", "mlp": True}
PAIRS_SOURCE = {"toy_pairs": {"format": "text_pairs", "role": "train-sup", "paths": ["toy_pairs.parquet"]}}


def write_params(path: Path, project_root: Path, variant: str, sources: dict | None = None, **overrides) -> Path:
    """The project's params.yaml with `variants.<variant>` updated (or added) and extra `sources`."""
    raw = yaml.safe_load((project_root / "params.yaml").read_text())
    raw["data"]["root"] = str((project_root / raw["data"]["root"]).resolve())
    raw["sources"].update(sources or {})
    raw["variants"].setdefault(variant, {}).update(overrides)
    path.write_text(yaml.safe_dump(raw))
    return path


def read_curve(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    env.pop("WORLD_SIZE", None)
    return env


def _run(cmd: list[str], cwd: Path, timeout: float = 300) -> None:
    """Run a command in its own session; on timeout kill the whole group (torchrun's workers too)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=_env(), start_new_session=True)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    assert rc == 0, f"{' '.join(cmd)} exited with {rc}"


def _stage_cmd(params: Path, variant: str, data: Path, out: Path, extra=()) -> list[str]:
    return [sys.executable, "-m", "stages.train", "--params", str(params), "--variant", variant,
            "--data", str(data), "--eval-data", str(data), "--out", str(out / "model"),
            "--metrics", str(out / "metrics"), "--checkpoints", str(out / "ckpt"), "--no-progress", *extra]


# --------------------------------------------------------------------------------------------
# Units


def test_linear_schedule_warms_up_then_decays_to_zero():
    assert [linear_schedule(s, 2, 10) for s in (0, 1, 2, 6, 10, 12)] == [0.0, 0.5, 1.0, 0.5, 0.0, 0.0]
    assert linear_schedule(0, 0, 4) == 1.0


def test_epoch_permutation_is_seeded_and_differs_by_epoch():
    a, b = epoch_permutation(50, 42, 0), epoch_permutation(50, 42, 0)
    assert (a == b).all() and sorted(a) == list(range(50))
    assert not (epoch_permutation(50, 42, 1) == a).all()


def test_tokenize_truncates_to_max_length_and_pads_dynamically(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    col = tokenize_column(tok, ["short one.", " ".join(["word"] * 100)], max_length=32)
    lengths = np.diff(col.offsets)
    assert lengths[1] == 32 and lengths[0] < 10
    ids, mask = pad_rows([col.ids[col.offsets[0]:col.offsets[1]]], pad_id=0)
    assert ids.shape == (1, lengths[0]) and mask.all()  # padded to the batch's longest row only
    ids, mask = pad_rows([col.ids[col.offsets[i]:col.offsets[i + 1]] for i in range(2)], pad_id=0)
    assert ids.shape == (2, 32) and mask[0].sum() == lengths[0]


def test_length_groups_sort_by_length_and_cover_every_row():
    lengths = [5, 30, 7, 12, 30, 3, 9, 20, 11]
    parts = length_groups(lengths, 3)
    assert len(parts) == 3 and sorted(np.concatenate(parts).tolist()) == list(range(len(lengths)))
    flat = [lengths[i] for i in np.concatenate(parts)]
    assert flat == sorted(flat)  # groups are runs of similar length
    assert [p.tolist() for p in length_groups(lengths, 1)] == [list(range(len(lengths)))]  # own order
    assert len(length_groups([4, 4], 8)) == 2  # never an empty group


@pytest.mark.parametrize("pooler", ["avg", "cls", "avg_first_last"])
def test_length_grouped_passes_equal_one_padded_pass(tiny_model_dir, pooler):
    """Embeddings, the in-batch loss and every gradient agree with one padded forward pass."""
    import torch

    from simcse_ops.loss import info_nce
    from simcse_ops.model import SimCSEEncoder

    rng = np.random.default_rng(0)
    rows = [rng.integers(5, 1000, size=int(n)) for n in rng.integers(3, 33, size=12)]
    rows = rows + rows  # unsup layout [x, x]
    torch.manual_seed(0)
    enc = SimCSEEncoder.from_pretrained(str(tiny_model_dir), pooler=pooler, mlp=True).eval()  # dropout off

    def loss_and_grads(groups):
        enc.zero_grad(set_to_none=True)
        z = encode_rows(enc, rows, 0, groups, torch.device("cpu"))
        loss = info_nce(z[:12], z[12:], None, 0.05, 0.0)
        loss.backward()
        return z.detach(), loss.detach(), {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}

    z1, l1, g1 = loss_and_grads(1)
    z_ref = enc(*pad_rows(rows, 0)).detach()
    torch.testing.assert_close(z1, z_ref)
    for groups in (3, 5):
        zg, lg, gg = loss_and_grads(groups)
        torch.testing.assert_close(zg, z1, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(lg, l1, rtol=1e-5, atol=1e-5)
        assert gg.keys() == g1.keys()
        for name in g1:
            torch.testing.assert_close(gg[name], g1[name], rtol=1e-4, atol=1e-5, msg=name)


def test_training_data_errors_name_the_file(tmp_path):
    write_data(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        load_training_texts(tmp_path, ["nope"], "unsup")
    with pytest.raises(DataError, match="anchor"):
        load_training_texts(tmp_path, ["wiki1m"], "sup")
    pq.write_table(pa.table({"text": ["fine.", " "], "doc": ["", ""], "file": ["f", "f"], "line": [1, 7]},
                            schema=schemas.CORPUS), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad.parquet:7: found an empty 'text'"):
        load_training_texts(tmp_path, ["bad"], "unsup")
    assert len(load_training_texts(tmp_path, ["wiki1m"], "unsup", max_samples=10)["text"]) == 10


# --------------------------------------------------------------------------------------------
# A whole stage run (in process)


def test_sup_stage_writes_a_loadable_model_metrics_and_curves(tmp_path, tiny_model_dir, project_root, monkeypatch):
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    from stages.train import main

    from simcse_ops import hardware

    torch.set_num_threads(1)
    # precision auto on an AVX2-only CPU (stubbed: no test depends on the real CPU) -> fp32
    monkeypatch.setattr(hardware, "cpu_info", lambda: hardware.CpuInfo("AMD EPYC 7B12", "x86_64",
                                                                       frozenset({"avx2"}), "AVX2"))
    data = write_data(tmp_path / "data")
    params = write_params(tmp_path / "params.yaml", project_root, "sup-nli", base_model=str(tiny_model_dir),
                          batch_size=16, max_steps=12, eval_steps=5, checkpoint_steps=5, lr=1e-3, precision="auto")
    monkeypatch.chdir(project_root)
    out = tmp_path / "run"
    main(_stage_cmd(params, "sup-nli", data, out)[3:])

    metrics = yaml.safe_load((out / "metrics" / "train.json").read_text())
    assert metrics["steps"] == 12 and metrics["method"] == "sup"
    assert metrics["best_step"] in (5, 10, 12)  # step 0 (the base) is on the curve, never exported
    assert metrics["dev_metric"] == "stsb_dev_spearman" and isinstance(metrics["best_dev_score"], float)
    assert (metrics["precision"], metrics["cpu_class"], metrics["cpu_model"], metrics["gpu"]) == (
        "fp32", "x86 AVX2", "AMD EPYC 7B12", None)
    dev_curve = read_curve(out / "metrics" / "dev.csv")
    assert [r["step"] for r in dev_curve] == ["0", "5", "10", "12"] and list(dev_curve[0]) == ["step", "dev_score"]
    assert len(read_curve(out / "metrics" / "loss.csv")) == 12
    st = SentenceTransformer(str(out / "model"), device="cpu")
    assert st.max_seq_length == 128  # the base model's inference length, not the training 32
    assert st.encode(["a cat."]).shape == (1, 32)
    AutoModel.from_pretrained(str(out / "model"))

    # tracked in MLflow (the embedded store beside params.yaml): the run is tagged with the model
    # folder's hash, and nothing of the run is written into the folder
    import mlflow

    from simcse_ops.tracking import model_hash

    assert not (out / "model" / "mlflow_run.json").exists()
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    found = client.search_runs([e.experiment_id for e in client.search_experiments()],
                               filter_string=f"tags.model_sha256 = '{model_hash(out / 'model')}'")
    assert len(found) == 1
    run = found[0]
    run_id = run.info.run_id
    assert run.data.tags["variant"] == "sup-nli"
    assert run.data.params["lr"] == "0.001"
    assert len(client.get_metric_history(run_id, "loss")) == 12
    assert "sentences_per_s" in run.data.metrics
    assert run.data.tags["train.precision"] == "fp32" and run.data.tags["train.cpu_class"] == "x86 AVX2"


def test_train_logs_progress_at_start_dev_checkpoints_and_end(tmp_path, tiny_model_dir, monkeypatch, caplog):
    """Line progress (no tqdm): the precision and device first, a line at each dev evaluation and
    checkpoint with step/total, loss and best dev, and a last line; bf16 where the CPU has it."""
    import logging

    import torch
    from transformers import AutoTokenizer

    from simcse_ops import hardware
    from simcse_ops.config import VariantConfig
    from simcse_ops.model import SimCSEEncoder
    from simcse_ops.sts import DevScorer
    from simcse_ops.trainer import DevConfig, train
    from simcse_ops.training_data import build_training_set

    torch.set_num_threads(1)
    monkeypatch.setattr(hardware, "cpu_info", lambda: hardware.CpuInfo("Xeon", "x86_64", frozenset({"amx_bf16"}), "AVX512"))
    write_data(tmp_path)
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    data = build_training_set(tok, load_training_texts(tmp_path, ["wiki1m"], "unsup"), "unsup", 32)
    cfg = VariantConfig(method="unsup", base_model=str(tiny_model_dir), batch_size=16, max_steps=4, eval_steps=2,
                        checkpoint_steps=3)
    scores = iter([1.0, 5.0, 2.0])  # steps 0, 2, 4
    encoder = SimCSEEncoder.from_pretrained(str(tiny_model_dir))
    with caplog.at_level(logging.INFO, logger="simcse_ops.trainer"):
        result, _ = train(cfg, data, encoder, tok, ckpt_dir=tmp_path / "ckpt",
                          dev=DevConfig(DevScorer("toy", lambda embed: next(scores))), name="train@toy")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("train@toy: ")]
    assert result.precision == "bf16"
    assert lines[0].startswith("train@toy: step 0/4 (0%)") and lines[0].endswith("unsup, bf16 on cpu (x86 AMX, Xeon)")
    assert lines[1].endswith("dev 1.00 before training")
    assert any(line.startswith("train@toy: step 2/4 (50%)") and "best dev 5.00 (step 2)" in line
               and line.endswith("dev 5.00") for line in lines)
    assert any(line.startswith("train@toy: step 3/4") and line.endswith("checkpoint saved") for line in lines)
    assert lines[-1].startswith("train@toy: step 4/4 (100%)") and "sentences/s" in lines[-1] \
        and "loss " in lines[-1] and lines[-1].endswith("done")
    assert all("\r" not in line for line in lines)


def test_sts_dev_scorer_reads_one_split_and_names_its_metric(tmp_path):
    from simcse_ops.sts import sts_dev_scorer

    write_data(tmp_path)
    scorer = sts_dev_scorer(tmp_path / "stsb.parquet", "dev")
    assert scorer.metric == "stsb_dev_spearman"
    rng = np.random.default_rng(0)
    score = scorer.score(lambda sents: rng.normal(size=(len(sents), 8)))
    assert -100.0 <= score <= 100.0
    with pytest.raises(DataError, match="split 'test'"):
        sts_dev_scorer(tmp_path / "stsb.parquet", "test")
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        sts_dev_scorer(tmp_path / "nope.parquet", "dev")


def toy_unsup_data(tmp_path, tiny_model_dir):
    """One thread, the toy wiki1m rows written under tmp_path, the tiny model's tokenizer and the
    unsupervised training set of those rows at length 32."""
    import torch
    from transformers import AutoTokenizer

    from simcse_ops.training_data import build_training_set

    torch.set_num_threads(1)
    write_data(tmp_path)
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    return tok, build_training_set(tok, load_training_texts(tmp_path, ["wiki1m"], "unsup"), "unsup", 32)


def test_train_selects_the_best_step_of_any_dev_scorer(tmp_path, tiny_model_dir):
    """The scorer is called at step 0 (curve only), every eval_steps and at the end; the best
    trained step wins whatever the metric."""
    from simcse_ops.config import VariantConfig
    from simcse_ops.model import SimCSEEncoder
    from simcse_ops.sts import DevScorer
    from simcse_ops.trainer import DevConfig, train

    tok, data = toy_unsup_data(tmp_path, tiny_model_dir)
    cfg = VariantConfig(method="unsup", base_model=str(tiny_model_dir), batch_size=16, max_steps=7, eval_steps=2,
                        checkpoint_steps=0)
    scores = iter([99.0, 1.0, 5.0, 2.0, 3.0])  # steps 0, 2, 4, 6, 7
    scorer = DevScorer("toy_dev_ndcg@10", lambda embed: (embed(["a cat."]).shape == (1, 32)) * next(scores))
    encoder = SimCSEEncoder.from_pretrained(str(tiny_model_dir))
    result, best = train(cfg, data, encoder, tok, ckpt_dir=tmp_path / "ckpt", dev=DevConfig(scorer), progress=False)
    assert [r["step"] for r in result.dev_curve] == [0, 2, 4, 6, 7]
    assert result.dev_metric == "toy_dev_ndcg@10" and result.best_step == 4 and result.best_dev_score == 5.0
    assert best is not None


def test_a_finished_run_resumes_only_with_the_same_start_weights_and_dev_set(tmp_path, tiny_model_dir):
    """A rerun of a finished run (DVC reruns train@V when a dep changes) resumes its last
    checkpoint, and trains nothing, only when nothing that changes the numbers changed: a new start
    model (`base_model: models/unsup-wiki` retrained) or a new dev split starts over."""
    import torch

    from simcse_ops.config import VariantConfig
    from simcse_ops.model import SimCSEEncoder
    from simcse_ops.sts import DevScorer
    from simcse_ops.trainer import DevConfig, train

    tok, data = toy_unsup_data(tmp_path, tiny_model_dir)
    cfg = VariantConfig(method="unsup", base_model=str(tiny_model_dir), batch_size=16, max_steps=4, eval_steps=2,
                        checkpoint_steps=2)

    def run(dev_fp: str, nudge: float = 0.0):
        torch.manual_seed(0)
        encoder = SimCSEEncoder.from_pretrained(str(tiny_model_dir))
        with torch.no_grad():
            next(encoder.parameters()).add_(nudge)
        scorer = DevScorer("toy_dev", lambda embed: 1.0, fingerprint=dev_fp)
        result, _ = train(cfg, data, encoder, tok, ckpt_dir=tmp_path / "ckpt", dev=DevConfig(scorer),
                          progress=False)
        return result

    assert run("dev-a").resumed_from_step is None
    assert run("dev-a").resumed_from_step == 4  # the same run: the finished checkpoint, no step trained
    assert run("dev-b").resumed_from_step is None  # the dev split changed
    assert run("dev-b").resumed_from_step == 4
    started_over = run("dev-b", nudge=1e-3)  # the start model changed
    assert started_over.resumed_from_step is None and started_over.steps == 4


def test_a_multi_task_scorer_gets_the_start_model_as_its_reference(tmp_path, tiny_model_dir):
    """Step 0's figures become the scorer's reference (what the selection rule's guards compare
    with); every task's figure is a column of the dev curve; a resumed run gets the reference back
    from the checkpoint's curve."""
    from simcse_ops.config import VariantConfig
    from simcse_ops.model import SimCSEEncoder
    from simcse_ops.sts import DevScorer
    from simcse_ops.trainer import DevConfig, train

    tok, data = toy_unsup_data(tmp_path, tiny_model_dir)
    cfg = VariantConfig(method="unsup", base_model=str(tiny_model_dir), batch_size=16, max_steps=4, eval_steps=2,
                        checkpoint_steps=2)

    def make_scorer():
        figures = iter([{"p": 50.0, "g": 80.0}, {"p": 60.0, "g": 70.0}, {"p": 55.0, "g": 79.8}])  # steps 0, 2, 4
        parts, reference = {}, {}

        def score(embed):
            parts.clear()
            parts.update(next(figures))
            short = max(0.0, reference["g"] - 0.5 - parts["g"]) if reference else 0.0
            return parts["p"] - 10.0 * short

        return DevScorer("select_p_dev", score, parts=parts, reference=reference)

    scorer = make_scorer()
    result, _ = train(cfg, data, SimCSEEncoder.from_pretrained(str(tiny_model_dir)), tok, ckpt_dir=tmp_path / "ckpt",
                      dev=DevConfig(scorer), progress=False)
    assert scorer.reference == {"p": 50.0, "g": 80.0}
    assert result.dev_curve == [{"step": 0, "dev_score": 50.0, "p": 50.0, "g": 80.0},
                                {"step": 2, "dev_score": -35.0, "p": 60.0, "g": 70.0},
                                {"step": 4, "dev_score": 55.0, "p": 55.0, "g": 79.8}]
    assert result.best_step == 4  # step 2 had the best primary but lost 10 points on the guard
    resumed = make_scorer()
    train(cfg, data, SimCSEEncoder.from_pretrained(str(tiny_model_dir)), tok, ckpt_dir=tmp_path / "ckpt",
          dev=DevConfig(resumed), progress=False)
    assert resumed.reference == {"p": 50.0, "g": 80.0}


def test_interpolation_exports_the_weighted_mean_of_start_and_trained_weights(tmp_path, tiny_model_dir):
    """WiSE-FT: with interpolation w the dev set scores, and the best step exports,
    (1 - w) * start + w * trained; the trained weights themselves keep training."""
    import torch

    from simcse_ops.config import VariantConfig
    from simcse_ops.model import SimCSEEncoder
    from simcse_ops.sts import DevScorer
    from simcse_ops.trainer import DevConfig, train

    tok, data = toy_unsup_data(tmp_path, tiny_model_dir)
    cfg = VariantConfig(method="unsup", base_model=str(tiny_model_dir), batch_size=16, max_steps=3, eval_steps=3,
                        checkpoint_steps=0, lr=1e-3, interpolation=0.25)
    start = SimCSEEncoder.from_pretrained(str(tiny_model_dir)).state_dict()
    encoder = SimCSEEncoder.from_pretrained(str(tiny_model_dir))
    _, best = train(cfg, data, encoder, tok, ckpt_dir=tmp_path / "ckpt",
                    dev=DevConfig(DevScorer("toy", lambda embed: 1.0)), progress=False)
    trained = encoder.state_dict()
    name = "backbone.embeddings.word_embeddings.weight"
    assert not torch.equal(trained[name], start[name])  # it trained
    torch.testing.assert_close(best[name], 0.75 * start[name] + 0.25 * trained[name])


def test_pairs_stage_lowers_the_loss_and_exports_a_loadable_model(tmp_path, tiny_model_dir, project_root,
                                                                   monkeypatch):
    import torch
    from sentence_transformers import SentenceTransformer

    from stages.train import main

    torch.set_num_threads(1)
    data = write_pairs(write_data(tmp_path / "data"))
    params = write_params(tmp_path / "params.yaml", project_root, "toy-pairs", PAIRS_SOURCE, **PAIRS_VARIANT,
                          base_model=str(tiny_model_dir), batch_size=16, max_steps=30, eval_steps=10,
                          checkpoint_steps=0, lr=1e-3)
    monkeypatch.chdir(project_root)
    out = tmp_path / "run"
    main(_stage_cmd(params, "toy-pairs", data, out)[3:])

    metrics = yaml.safe_load((out / "metrics" / "train.json").read_text())
    assert metrics["method"] == "pairs" and metrics["steps"] == 30 and metrics["examples"] == 240
    losses = [float(r["loss"]) for r in read_curve(out / "metrics" / "loss.csv")]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3  # ln(16) = 2.77 at chance
    st = SentenceTransformer(str(out / "model"), device="cpu")
    assert st.encode(["a cat.", "a dog."]).shape == (2, 32)


# --------------------------------------------------------------------------------------------
# A kill between the best weights and the checkpoint: resume never starts before the best step

# Dev scores by step of a 6-step run with eval_steps 2 and checkpoint_steps 3 (not a multiple):
# step 0 is the curve only, steps 2 and 4 are new bests, step 6 is not.
KILL_SCORES = {0: 0.0, 2: 1.0, 4: 3.0, 6: 2.0}


def _kill_cfg(tiny_model_dir):
    from simcse_ops.config import VariantConfig

    return VariantConfig(method="unsup", base_model=str(tiny_model_dir), batch_size=16, max_steps=6, eval_steps=2,
                         checkpoint_steps=3, lr=1e-3)


def _train_scripted(tiny_model_dir, tok, data, ckpt_dir: Path):
    """train() on the toy set with KILL_SCORES as the dev scores of the steps it evaluates (a
    resumed run evaluates only the steps after its checkpoint's)."""
    from simcse_ops.checkpoint import checkpoint_files, seed_everything
    from simcse_ops.model import SimCSEEncoder
    from simcse_ops.sts import DevScorer
    from simcse_ops.trainer import DevConfig, train

    found = checkpoint_files(ckpt_dir) if ckpt_dir.is_dir() else []
    start = int(found[-1].stem.split("-")[1]) if found else 0
    scores = iter(s for step, s in sorted(KILL_SCORES.items()) if step > start or step == start == 0)
    cfg = _kill_cfg(tiny_model_dir)
    seed_everything(cfg.seed)  # the MLP head's initialisation, as run_training does
    return train(cfg, data, SimCSEEncoder.from_pretrained(str(tiny_model_dir)), tok, ckpt_dir=ckpt_dir,
                 dev=DevConfig(DevScorer("toy", lambda embed: next(scores))), progress=False)


class _Killed(BaseException):
    """Stands for SIGKILL in process: no `except Exception` catches it, and nothing the loop does
    after the kill point runs."""


def test_a_kill_at_any_checkpoint_write_resumes_at_or_after_its_best_step(tmp_path, tiny_model_dir, monkeypatch):
    """Every new best step writes best-<step>.pt then checkpoint-<step>.pt, even off the checkpoint
    steps; killed before or after any write, the folder's latest checkpoint names a best step at
    or before its own whose weights are on disk, and the resumed run ends with the uninterrupted
    run's best step, best weights and loss curve."""
    import torch

    from simcse_ops import checkpoint

    tok, data = toy_unsup_data(tmp_path, tiny_model_dir)
    real_save = checkpoint.torch_save_atomic
    writes: list[str] = []

    def recording_save(obj, path):
        real_save(obj, path)
        writes.append(path.name)

    monkeypatch.setattr(checkpoint, "torch_save_atomic", recording_save)
    full, full_best = _train_scripted(tiny_model_dir, tok, data, tmp_path / "full")
    assert writes == ["best-00000002.pt", "checkpoint-00000002.pt", "checkpoint-00000003.pt",
                      "best-00000004.pt", "checkpoint-00000004.pt", "checkpoint-00000006.pt"]
    assert full.best_step == 4 and sorted(p.name for p in (tmp_path / "full").iterdir()) == \
        ["best-00000004.pt", "checkpoint-00000006.pt"]

    for k in range(len(writes)):
        for after in (False, True):
            ckpt_dir = tmp_path / f"killed-{k}-{after}"
            count = iter(range(len(writes)))

            def killing_save(obj, path, k=k, after=after):
                if next(count) == k and not after:
                    raise _Killed
                real_save(obj, path)
                if after and path.name == writes[k]:
                    raise _Killed

            monkeypatch.setattr(checkpoint, "torch_save_atomic", killing_save)
            with pytest.raises(_Killed):
                _train_scripted(tiny_model_dir, tok, data, ckpt_dir)
            monkeypatch.setattr(checkpoint, "torch_save_atomic", real_save)

            at = f"killed {'after' if after else 'before'} writing {writes[k]}"
            found = checkpoint.checkpoint_files(ckpt_dir)
            latest = checkpoint.Checkpoint.load(found[-1]) if found else None
            if latest is not None and latest.best_step is not None:
                assert latest.best_step <= latest.step, at
                assert checkpoint.best_file(ckpt_dir, latest.best_step).is_file(), at
            if after and writes[k].startswith("checkpoint-"):  # the checkpoint of a best step is written
                assert latest.step == int(writes[k][11:19]), at
                assert latest.best_step == (4 if latest.step >= 4 else 2), at
            resumed, best = _train_scripted(tiny_model_dir, tok, data, ckpt_dir)
            assert resumed.resumed_from_step == (latest.step if latest else None), at
            if latest is not None and latest.best_step is not None:
                assert resumed.resumed_from_step >= latest.best_step, at
            assert resumed.best_step == 4 and resumed.loss_curve == full.loss_curve, at
            assert all(torch.equal(best[n], full_best[n]) for n in full_best), at


# The child of the SIGKILL test: train as _train_scripted, SIGKILLed right after best-00000004.pt
# is written, before checkpoint-00000004.pt.
_KILL_CHILD = """
import os, signal, sys
from pathlib import Path
from simcse_ops import checkpoint
from tests.test_trainer import _train_scripted, toy_unsup_data

real_save = checkpoint.torch_save_atomic

def save(obj, path):
    real_save(obj, path)
    if path.name == "best-00000004.pt":
        os.kill(os.getpid(), signal.SIGKILL)

checkpoint.torch_save_atomic = save
tmp, model = Path(sys.argv[1]), Path(sys.argv[2])
tok, data = toy_unsup_data(tmp, model)
_train_scripted(model, tok, data, tmp / "ckpt")
"""


def test_sigkill_between_the_best_weights_and_their_checkpoint_resumes_from_a_consistent_pair(
        tmp_path, tiny_model_dir, project_root):
    """kill -9 between best-<4>.pt and checkpoint-<4>.pt: checkpoint 3 and its best step 2's
    weights are still on disk, so the run resumes at step 3 (after its best step) and ends with
    the uninterrupted run's best step and weights."""
    import torch

    from simcse_ops.checkpoint import Checkpoint, checkpoint_files

    proc = subprocess.run([sys.executable, "-c", _KILL_CHILD, str(tmp_path), str(tiny_model_dir)],
                          cwd=project_root, env=_env(), capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    ckpt_dir = tmp_path / "ckpt"
    assert sorted(p.name for p in ckpt_dir.iterdir() if not p.name.startswith(".")) == \
        ["best-00000002.pt", "best-00000004.pt", "checkpoint-00000003.pt"]
    latest = Checkpoint.load(checkpoint_files(ckpt_dir)[-1])
    assert (latest.step, latest.best_step) == (3, 2)

    tok, data = toy_unsup_data(tmp_path, tiny_model_dir)
    resumed, best = _train_scripted(tiny_model_dir, tok, data, ckpt_dir)
    full, full_best = _train_scripted(tiny_model_dir, tok, data, tmp_path / "full")
    assert resumed.resumed_from_step == 3 and resumed.best_step == full.best_step == 4
    assert resumed.loss_curve == full.loss_curve
    assert all(torch.equal(best[n], full_best[n]) for n in full_best)


# --------------------------------------------------------------------------------------------
# SIGKILL + resume gives the uninterrupted run's loss curve


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["unsup-wiki", "toy-pairs"])
def test_killed_run_resumes_with_the_same_loss_curve(tmp_path, tiny_model_dir, project_root, variant):
    data = write_pairs(write_data(tmp_path / "data", n=400), n=400)
    total = 80
    extra = (PAIRS_SOURCE, PAIRS_VARIANT) if variant == "toy-pairs" else (None, {})
    params = write_params(tmp_path / "params.yaml", project_root, variant, extra[0], **extra[1],
                          base_model=str(tiny_model_dir), batch_size=8, max_steps=total, eval_steps=30,
                          checkpoint_steps=10, lr=1e-3, warmup_ratio=0.1)
    full, killed = tmp_path / "full", tmp_path / "killed"
    _run(_stage_cmd(params, variant, data, full), project_root)

    proc = subprocess.Popen(_stage_cmd(params, variant, data, killed), cwd=project_root, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not list((killed / "ckpt").glob("checkpoint-*.pt")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    ckpts = list((killed / "ckpt").glob("checkpoint-*.pt"))
    assert ckpts, "the run was killed before its first checkpoint"
    killed_at = int(ckpts[0].stem.split("-")[1])
    assert killed_at < total and not (killed / "model").exists()

    _run(_stage_cmd(params, variant, data, killed), project_root)
    resumed = yaml.safe_load((killed / "metrics" / "train.json").read_text())
    assert resumed["resumed_from_step"] is not None and resumed["resumed_from_step"] >= killed_at
    a, b = read_curve(full / "metrics" / "loss.csv"), read_curve(killed / "metrics" / "loss.csv")
    assert len(a) == total
    assert [(r["step"], r["loss"]) for r in a] == [(r["step"], r["loss"]) for r in b]
    assert read_curve(full / "metrics" / "dev.csv") == read_curve(killed / "metrics" / "dev.csv")
    assert (full / "model" / "model.safetensors").read_bytes() == (killed / "model" / "model.safetensors").read_bytes()
    assert resumed["train_s"] > 0 and resumed["sentences_per_s"] > 0

    # Run again: it resumes at its last step and re-exports; the time of steps 1..80 is carried over.
    _run(_stage_cmd(params, variant, data, full), project_root)
    again = yaml.safe_load((full / "metrics" / "train.json").read_text())
    assert again["resumed_from_step"] == total and again["steps"] == total
    assert again["train_s"] > 0 and again["sentences_per_s"] > 0


# --------------------------------------------------------------------------------------------
# torchrun: 2 processes match 1 process on the same global batch


@pytest.mark.slow
def test_two_process_ddp_matches_single_process(tmp_path, tiny_model_dir, project_root):
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    # Without dropout both runs compute the same function, so the losses must agree step by step.
    model_dir = tmp_path / "tiny-nodrop"
    config = AutoConfig.from_pretrained(str(tiny_model_dir), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    AutoModel.from_pretrained(str(tiny_model_dir), config=config).save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(str(tiny_model_dir)).save_pretrained(model_dir)
    data = write_data(tmp_path / "data")
    steps = 5
    params = write_params(tmp_path / "params.yaml", project_root, "sup-nli", base_model=str(model_dir),
                          batch_size=16, max_steps=steps, eval_steps=0, checkpoint_steps=0, lr=2e-3,
                          hard_negative_weight=0.5)
    single, multi = tmp_path / "single", tmp_path / "ddp"
    _run(_stage_cmd(params, "sup-nli", data, single, ["--no-dev"]), project_root)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    _run(torchrun + _stage_cmd(params, "sup-nli", data, multi, ["--no-dev"])[1:], project_root)

    one = [float(r["loss"]) for r in read_curve(single / "metrics" / "loss.csv")]
    two = [float(r["loss"]) for r in read_curve(multi / "metrics" / "loss.csv")]
    assert len(one) == len(two) == steps
    np.testing.assert_allclose(two, one, rtol=0, atol=2e-4)
    assert max(abs(x - one[0]) for x in one[1:]) > 1e-3  # the updates matter to later losses
    m = yaml.safe_load((multi / "metrics" / "train.json").read_text())
    assert m["world_size"] == 2
