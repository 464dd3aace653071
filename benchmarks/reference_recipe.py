"""The reference recipe, scored by our evaluator: sentence-transformers' MNRL training on our data.

The brief's reference figures (80.14 unsupervised, 79.39 supervised) come from
`SentenceTransformerTrainer` + `MultipleNegativesRankingLoss` started from the default encoder:
mean pooling (the encoder's own), batch 64, training length 32, 1 epoch; unsupervised on the
wiki1m sentences as (x, x) pairs at lr 3e-5, supervised on SNLI (premise, entailment,
contradiction) triples at lr 5e-5. This script trains exactly that and scores the result with
`simcse_ops.evaluation.evaluate_model` (the 7 tasks of params.yaml `evaluate`, full inference
length), so a variant's `metrics/<variant>/sts.json` and the reference are measured by the same
code on the same data. Prints one JSON line.

    python benchmarks/reference_recipe.py --method unsup --data data/ingested   # the brief's 11,914
    python benchmarks/reference_recipe.py --method unsup --data data/clean      # our deduplicated 11,352
    python benchmarks/reference_recipe.py --method sup --data data/ingested
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

RECIPES = {
    "unsup": {"source": "wiki1m", "columns": {"text": ("anchor", "positive")}, "lr": 3e-5},
    "sup": {"source": "snli", "columns": {"anchor": ("anchor",), "positive": ("positive",),
                                          "negative": ("negative",)}, "lr": 5e-5},
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", choices=sorted(RECIPES), required=True)
    ap.add_argument("--data", default="data/ingested", help="folder with <source>.parquet (ingested or clean)")
    ap.add_argument("--eval-data", default="data/ingested", help="folder with the ingested STS tasks")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", default="default")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-seq-length", type=int, default=32)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=None, help="default: 3e-5 unsup, 5e-5 sup")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (default fp32, as the brief's reference)")
    ap.add_argument("--limit", type=int, default=None, help="first N examples only (smoke tests)")
    ap.add_argument("--out", default=None, help="keep the trained model here (default: a temporary folder)")
    args = ap.parse_args(argv)

    import pyarrow.parquet as pq
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from simcse_ops.config import load_params
    from simcse_ops.encoder import resolve_model
    from simcse_ops.evaluation import evaluate_model

    recipe = RECIPES[args.method]
    path = os.path.join(args.data, f"{recipe['source']}.parquet")
    if not os.path.isfile(path):
        sys.exit(f"{path}: not found; run `dvc repro dedup` (data/clean) or `dvc repro ingest` (data/ingested)")
    table = pq.read_table(path, columns=list(recipe["columns"])).to_pydict()
    if args.limit is not None:
        table = {k: v[:args.limit] for k, v in table.items()}
    ds = Dataset.from_dict({out: table[col] for col, outs in recipe["columns"].items() for out in outs})
    lr = args.lr if args.lr is not None else recipe["lr"]

    torch.manual_seed(args.seed)
    model = SentenceTransformer(resolve_model(args.model), device="cpu")
    inference_length = model.max_seq_length
    model.max_seq_length = args.max_seq_length
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or os.path.join(tmp, "model")
        targs = SentenceTransformerTrainingArguments(
            output_dir=os.path.join(tmp, "trainer"), per_device_train_batch_size=args.batch_size,
            num_train_epochs=args.epochs, learning_rate=lr, warmup_steps=0, lr_scheduler_type="linear",
            max_grad_norm=1.0, weight_decay=0.0, report_to="none", save_strategy="no", logging_strategy="no",
            eval_strategy="no", disable_tqdm=True, use_cpu=not torch.cuda.is_available(), seed=args.seed,
            bf16=args.bf16,
        )
        trainer = SentenceTransformerTrainer(model=model, args=targs, train_dataset=ds,
                                             loss=MultipleNegativesRankingLoss(model, scale=20.0))
        t0 = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - t0
        model.max_seq_length = inference_length  # evaluated at full length, as the brief's reference
        model.save(out)
        params = load_params(args.params)
        result = evaluate_model(params, out, args.eval_data)
    tasks = list(params.evaluate.tasks)
    from simcse_ops.hardware import machine_report

    print(json.dumps({
        "benchmark": "reference_recipe",
        "recipe": "SentenceTransformerTrainer + MultipleNegativesRankingLoss(scale=20), mean pooling",
        "method": args.method,
        "data": path,
        "examples": len(ds),
        "batch_size": args.batch_size,
        "max_seq_length": args.max_seq_length,
        "epochs": args.epochs,
        "lr": lr,
        "precision": "bf16" if args.bf16 else "fp32",
        "train_s": round(train_s, 1),
        "sentences_per_s": round(len(ds) * args.epochs / train_s, 1),
        "sts": {t: result[t] for t in tasks},
        "avg": result["avg"],
        "machine": machine_report(),
    }))


if __name__ == "__main__":
    main()
