"""Training throughput: our SimCSE step vs sentence-transformers' trainer, same model and batch.

Both sides train the same encoder (default: the bundled all-MiniLM-L6-v2) on the same unsupervised
SimCSE task (each sentence is its own positive through dropout), batch 64, max length 32, AdamW,
linear schedule, gradient clipping at 1.0, on CPU, the same torch thread count and the same
precision (fp32, and bf16 autocast on both sides), in one process, on a seeded random sample of
the corpus:

- ours: `simcse_ops.trainer.train_step` as `stages/train.py` runs it with the default params
  (text tokenised once ahead of time, the tokenisation time of the measured sentences counted;
  rows encoded in length groups; FastDropout; fused AdamW);
- ours plain: the same step with `length_groups: 1` and `dropout_impl: native` (one padded pass,
  torch's dropout), to show where the difference comes from;
- theirs: `SentenceTransformerTrainer` with `MultipleNegativesRankingLoss(scale=1/0.05)` on
  (anchor, positive) = (x, x) columns (`bf16=True` for the bf16 rows).

Each side runs `--warmup` steps, then the wall time of the next `--steps` steps is measured
(everything between the end of the last warm-up step and the end of the last step: data, forward,
backward, clipping, optimiser, schedule). Rounds alternate the sides so that a noisy shared
machine disturbs them alike; each side's best round counts. Prints one JSON line.

    python benchmarks/train_throughput.py --data data/clean/wiki1m.parquet
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load_sentences(path: str | None, n: int) -> list[str]:
    if path:
        import pyarrow.parquet as pq

        texts = pq.read_table(path, columns=["text"]).column("text").to_pylist()
        import random

        random.Random(0).shuffle(texts)  # a random sample: its padding is a training batch's
    else:
        texts = []
    if len(texts) < n:  # synthetic fallback: Wikipedia-like sentence lengths are what matter
        import random

        rng = random.Random(0)
        words = "the of and in to a was is for on as by with he that at from his it an were are".split()
        texts += [" ".join(rng.choice(words) for _ in range(rng.randint(8, 40))) + "." for _ in range(n - len(texts))]
    return texts[:n]


def bench_ours(model_name: str, sentences: list[str], args, precision: str, plain: bool = False) -> float:
    """Our step as `stages/train.py` runs it (`plain`: one padded pass and torch's dropout)."""
    import numpy as np
    import torch
    from transformers import AutoTokenizer

    from simcse_ops.config import VariantConfig
    from simcse_ops.encoder import resolve_model
    from simcse_ops.model import SimCSEEncoder
    from simcse_ops.hardware import autocast, resolve_precision
    from simcse_ops.trainer import configure_dropout, linear_schedule, make_optimizer, train_step
    from simcse_ops.training_data import TrainingSet, tokenize_column

    extra = {"length_groups": 1, "dropout_impl": "native"} if plain else {}
    cfg = VariantConfig(method="unsup", batch_size=args.batch_size, lr=3e-5, max_seq_length=args.max_seq_length,
                        precision=precision, **extra)
    device = torch.device("cpu")
    path = resolve_model(model_name)
    tok = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    enc = SimCSEEncoder.from_pretrained(path, pooler="avg", mlp=True, mlp_only_train=True).train()
    configure_dropout(enc, cfg, device)
    total = args.warmup + args.steps
    opt = make_optimizer(enc, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: linear_schedule(s, 0, total))
    effective = resolve_precision(precision, device, key="--precisions")  # bf16 on a CPU without it: a warning
    b = args.batch_size
    t_tok = time.perf_counter()
    data = TrainingSet("unsup", {"text": tokenize_column(tok, sentences, args.max_seq_length)})
    t_tok = time.perf_counter() - t_tok
    start = None
    for step in range(total):
        if step == args.warmup:
            start = time.perf_counter()
        train_step(enc, opt, sched, data.rows(np.arange(step * b, (step + 1) * b)), tok.pad_token_id, 2, cfg,
                   autocast=lambda: autocast(effective, device), device=device)
    elapsed = time.perf_counter() - start + t_tok * args.steps / total  # the measured steps' share
    return args.steps * b / elapsed


def bench_st(model_name: str, sentences: list[str], args, precision: str) -> float:
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback

    from simcse_ops.encoder import resolve_model

    torch.manual_seed(0)
    model = SentenceTransformer(resolve_model(model_name), device="cpu")
    model.max_seq_length = args.max_seq_length
    ds = Dataset.from_dict({"anchor": sentences, "positive": sentences})
    total = args.warmup + args.steps
    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            marks.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        targs = SentenceTransformerTrainingArguments(
            output_dir=out, per_device_train_batch_size=args.batch_size, max_steps=total, learning_rate=3e-5,
            lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=1.0, weight_decay=0.0,
            report_to="none", save_strategy="no", logging_strategy="no", eval_strategy="no",
            disable_tqdm=True, use_cpu=True, seed=0, dataloader_drop_last=True, bf16=precision == "bf16",
        )
        trainer = SentenceTransformerTrainer(model=model, args=targs, train_dataset=ds,
                                             loss=MultipleNegativesRankingLoss(model, scale=1.0 / 0.05),
                                             callbacks=[Clock()])
        trainer.train()
    measured = marks[-1] - marks[args.warmup - 1] if args.warmup > 0 else marks[-1] - marks[0]
    steps = args.steps if args.warmup > 0 else args.steps - 1
    return steps * args.batch_size / measured


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", default="data/clean/wiki1m.parquet", help="CORPUS parquet ('' for synthetic text)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-seq-length", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32 and/or bf16 (both sides alike)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for both sides (default: torch's)")
    args = ap.parse_args(argv)
    if args.warmup < 1:
        ap.error("--warmup must be >= 1")
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if not precisions or any(p not in ("fp32", "bf16") for p in precisions):
        ap.error("--precisions: expected fp32 and/or bf16")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    data = args.data if args.data and os.path.exists(args.data) else None
    sentences = load_sentences(data, args.batch_size * (args.warmup + args.steps))
    runs: dict[str, dict[str, list[float]]] = {p: {"ours": [], "ours_plain": [], "st": []} for p in precisions}
    for _ in range(args.rounds):
        for p in precisions:
            r = runs[p]
            r["ours"].append(bench_ours(args.model, sentences, args, p))
            r["ours_plain"].append(bench_ours(args.model, sentences, args, p, plain=True))
            r["st"].append(bench_st(args.model, sentences, args, p))
            print(f"round {p}: ours {r['ours'][-1]:.1f}, ours plain {r['ours_plain'][-1]:.1f}, "
                  f"sentence-transformers {r['st'][-1]:.1f} sentences/s", file=sys.stderr)
    import sentence_transformers
    import transformers

    results = {}
    for p, r in runs.items():
        best = {k: max(v) for k, v in r.items()}
        results[p] = {
            "ours_sentences_per_s": round(best["ours"], 2),
            "ours_plain_sentences_per_s": round(best["ours_plain"], 2),
            "sentence_transformers_sentences_per_s": round(best["st"], 2),
            "ratio": round(best["ours"] / best["st"], 3),
            "ratio_plain": round(best["ours_plain"] / best["st"], 3),
            "rounds": {k: [round(x, 2) for x in v] for k, v in r.items()},
        }
    from simcse_ops.hardware import machine_report

    print(json.dumps({
        "benchmark": "train_throughput",
        "baseline": "SentenceTransformerTrainer + MultipleNegativesRankingLoss, same precision",
        "model": args.model,
        "batch_size": args.batch_size,
        "max_seq_length": args.max_seq_length,
        "measured_steps": args.steps,
        "rounds": args.rounds,
        "results": results,
        "data": data or "synthetic",
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "machine": machine_report(),
    }))


if __name__ == "__main__":
    main()
