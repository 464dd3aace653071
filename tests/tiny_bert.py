"""The tiny random BERT of the unit tests (fixture `tiny_model_dir`), also built by the benchmarks that
run the tiny project (benchmarks/team_parallel.py)."""

from __future__ import annotations

from pathlib import Path


def make_tiny_bert(out: Path) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32, seed 0) saved as a Hugging Face folder at
    `out`, with the default encoder's WordPiece tokenizer (real sentences tokenise normally)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from simcse_ops.encoder import default_model_path

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(default_model_path()))
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    model = BertModel(config)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out
