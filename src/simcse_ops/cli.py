"""The `simcse-ops` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys


def sts_cmd(args: argparse.Namespace) -> int:
    from simcse_ops.encoder import encode, load_sentence_transformer
    from simcse_ops.sts import pair_cosines, pearson100, read_pairs_file, embed_unique, spearman100

    pairs = read_pairs_file(args.pairs)
    model = load_sentence_transformer(args.model, max_seq_length=args.max_seq_length, device=args.device)
    s1, s2 = pairs["sentence1"].tolist(), pairs["sentence2"].tolist()
    index, emb = embed_unique(lambda s: encode(model, s, batch_size=args.batch_size), s1 + s2)
    pred = pair_cosines(index, emb, s1, s2)
    gold = pairs["score"].to_numpy()
    print(
        json.dumps(
            {
                "spearman": round(spearman100(pred, gold), 2),
                "pearson": round(pearson100(pred, gold), 2),
                "n": len(pairs),
            }
        )
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="simcse-ops", description="SimCSE sentence-encoder pipeline tools")
    sub = ap.add_subparsers(dest="command", required=True)

    sts = sub.add_parser("sts", help="score a model on a pairs file (Spearman/Pearson x100 of cosine)")
    sts.add_argument("--model", required=True, help="model folder, 'default', models:/NAME@ALIAS, or a hub id")
    sts.add_argument("--pairs", required=True, help="TSV/CSV/JSONL with sentence1, sentence2, score")
    sts.add_argument("--batch-size", type=int, default=64)
    sts.add_argument("--max-seq-length", type=int, default=None, help="default: the model's own")
    sts.add_argument("--device", default="auto")
    sts.set_defaults(func=sts_cmd)

    from simcse_ops.registry import add_registry_subcommands

    add_registry_subcommands(sub)  # promote, rollback, history, repair
    return ap


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"simcse-ops {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
