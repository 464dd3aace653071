"""GPU training throughput of the SimCSE step on a BERT-base-shaped encoder, in the precision the
training would use there (`--precision auto`: bf16 autocast on a GPU with bf16, else fp32;
`simcse_ops.hardware.resolve_precision`).

A randomly initialised BERT-base (12 layers, hidden 768, 12 heads, FFN 3072, vocab 30,522; the
weights do not change the speed) trained with our unsupervised step (`simcse_ops.trainer.train_step`,
one forward over [x, x], autocast as resolved, AdamW, clipping) on random token ids with lengths drawn in
[8, max_seq_length] and dynamic padding. Reports sentences/s and the projected time of a
1M-sentence unsupervised epoch (target on one H200: under 3 minutes). Prints one JSON line.

    python benchmarks/gpu_throughput.py                 # batch 64 (the paper's), length 32
    python benchmarks/gpu_throughput.py --batch-size 512 --compile

Exits with status 2 and a message when no CUDA device is available. `--device cpu --layers 2
--hidden 64` smoke-tests the script itself on a CPU (its figures mean nothing).
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-seq-length", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--epoch-sentences", type=int, default=1_000_000)
    ap.add_argument("--length-groups", type=int, default=1,
                    help="forward passes per step over rows of similar length (1: one padded pass)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the encoder (dynamic shapes)")
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                    help="as params.yaml variants.<V>.precision (default auto)")
    ap.add_argument("--device", default="cuda", help="cuda (default); cpu only to smoke-test this script")
    ap.add_argument("--layers", type=int, default=12, help="BERT-base: 12 (smaller only for smoke tests)")
    ap.add_argument("--hidden", type=int, default=768, help="BERT-base: 768 (smaller only for smoke tests)")
    args = ap.parse_args(argv)

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"benchmark": "gpu_throughput", "error": "no CUDA device: this benchmark needs a GPU "
                          f"(torch {torch.__version__}, cuda build: {torch.version.cuda})"}))
        print("gpu_throughput: no CUDA device available; run it on a machine with a GPU", file=sys.stderr)
        raise SystemExit(2)

    import numpy as np
    from transformers import BertConfig, BertModel

    from simcse_ops.config import VariantConfig
    from simcse_ops.model import SimCSEEncoder
    from simcse_ops.hardware import autocast, machine_report, resolve_precision
    from simcse_ops.trainer import linear_schedule, make_optimizer, train_step

    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if on_cuda else (lambda: None)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=args.hidden, num_hidden_layers=args.layers,
                        num_attention_heads=max(1, args.hidden // 64), intermediate_size=4 * args.hidden,
                        max_position_embeddings=512)
    enc = SimCSEEncoder(BertModel(config), pooler="cls", mlp=True, mlp_only_train=False).to(device).train()
    cfg = VariantConfig(method="unsup", batch_size=args.batch_size, lr=3e-5, max_seq_length=args.max_seq_length,
                        precision=args.precision, length_groups=args.length_groups)
    precision = resolve_precision(args.precision, device, key="--precision")
    total = args.warmup + args.steps
    opt = make_optimizer(enc, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: linear_schedule(s, 0, total))
    if args.compile:
        enc.backbone = torch.compile(enc.backbone, dynamic=True)

    rng = np.random.default_rng(0)
    b, L = args.batch_size, args.max_seq_length
    batches = []  # token rows [x_1..x_b, x_1..x_b]: two dropout views of each sentence
    for _ in range(total):
        rows = [rng.integers(1000, config.vocab_size, size=int(n)) for n in rng.integers(8, L + 1, size=b)]
        batches.append(rows + rows)

    start = None
    for step, rows in enumerate(batches):
        if step == args.warmup:
            sync()
            start = time.perf_counter()
        train_step(enc, opt, sched, rows, 0, 2, cfg, autocast=lambda: autocast(precision, device), device=device)
    sync()
    elapsed = time.perf_counter() - start
    sps = args.steps * b / elapsed
    print(json.dumps({
        "benchmark": "gpu_throughput",
        "device": torch.cuda.get_device_name(0) if on_cuda else "cpu (smoke test)",
        "model": f"bert shape {args.layers}x{args.hidden}, random weights",
        "precision": precision,
        "compile": args.compile,
        "length_groups": args.length_groups,
        "batch_size": b,
        "max_seq_length": L,
        "measured_steps": args.steps,
        "step_ms": round(1000 * elapsed / args.steps, 2),
        "sentences_per_s": round(sps, 1),
        "epoch_sentences": args.epoch_sentences,
        "epoch_minutes": round(args.epoch_sentences / sps / 60, 2),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if on_cuda else None,
        "machine": machine_report(),
    }))


if __name__ == "__main__":
    main()
