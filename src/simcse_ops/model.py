"""The SimCSE encoder: any Hugging Face encoder + a pooler + SimCSE's optional MLP head.

One class serves every architecture `AutoModel` knows: the backbone is called through its public
`forward` (input ids, attention mask, optionally all hidden states) and the pooler works on its
outputs, so nothing here depends on the model's family or name.

Poolers (Gao et al. 2021, `simcse/models.py`):

    cls                last_hidden[:, 0]                             ([CLS] vector)
    cls_before_pooler  last_hidden[:, 0], never followed by the MLP head
    avg                mean of last_hidden over non-padding tokens
    avg_first_last     (mean(h_1) + mean(h_L)) / 2  (h_1: first Transformer layer's output)
    avg_top2           (mean(h_{L-1}) + mean(h_L)) / 2

MLP head: z = tanh(W p + b), W (H, H). With `mlp_only_train` the head is used for the loss only and
dropped from the inference model (SimCSE's unsupervised recipe).

`export_sentence_transformer` writes the inference model as a sentence-transformers folder
(Transformer -> Pooling or WeightedLayerPooling + Pooling -> [Dense(tanh)] -> [Normalize]) that
also loads with `AutoModel`; safetensors only.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Dense, Normalize, Transformer
from sentence_transformers.sentence_transformer.modules import Pooling, WeightedLayerPooling
from torch import Tensor, nn
from transformers import AutoModel

from simcse_ops.config import POOLERS
from simcse_ops.encoder import load_sentence_transformer, resolve_model
from simcse_ops.fast_dropout import FAST_ATTENTION  # a training-only attention: never exported
from simcse_ops.files import atomic_path

log = logging.getLogger(__name__)

_LAYER_POOLERS = ("avg_first_last", "avg_top2")


class MLPHead(nn.Module):
    """SimCSE's projection head: Linear(H, H) followed by tanh."""

    def __init__(self, hidden_size: int, init_std: float = 0.02) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.activation = nn.Tanh()
        nn.init.normal_(self.dense.weight, mean=0.0, std=init_std)
        nn.init.zeros_(self.dense.bias)

    def forward(self, x: Tensor) -> Tensor:  # (N, H) -> (N, H)
        return self.activation(self.dense(x))


def masked_mean(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean over the tokens whose mask is 1: (N, T, H), (N, T) -> (N, H)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (N, T, 1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def pool(pooler: str, attention_mask: Tensor, last_hidden: Tensor, hidden_states=None) -> Tensor:
    """Sentence vectors (N, H) from a backbone's outputs, as the named pooler defines them."""
    if pooler in ("cls", "cls_before_pooler"):
        return last_hidden[:, 0]
    if pooler == "avg":
        return masked_mean(last_hidden, attention_mask)
    if pooler in _LAYER_POOLERS:
        if hidden_states is None or len(hidden_states) < 2:
            raise ValueError(f"pooler {pooler!r} needs the backbone's hidden states of every layer")
        first = hidden_states[1] if pooler == "avg_first_last" else hidden_states[-2]
        # The mean is linear, so mean((a + b) / 2) == (mean(a) + mean(b)) / 2.
        return masked_mean((first + hidden_states[-1]) / 2.0, attention_mask)
    raise ValueError(f"unknown pooler {pooler!r}; expected one of {', '.join(POOLERS)}")


class SimCSEEncoder(nn.Module):
    """A Hugging Face encoder with a SimCSE pooler and an optional MLP head.

    `forward` returns the training representation (MLP applied when the head exists and the
    pooler is not `cls_before_pooler`); `embed` returns the inference representation (the MLP
    dropped when `mlp_only_train`).
    """

    def __init__(
        self,
        backbone: nn.Module,
        pooler: str = "avg",
        mlp: bool = True,
        mlp_only_train: bool = True,
    ) -> None:
        super().__init__()
        if pooler not in POOLERS:
            raise ValueError(f"unknown pooler {pooler!r}; expected one of {', '.join(POOLERS)}")
        self.backbone = backbone
        self.pooler = pooler
        self.mlp_only_train = mlp_only_train
        config = backbone.config
        use_mlp = mlp and pooler != "cls_before_pooler"
        self.mlp = MLPHead(config.hidden_size, getattr(config, "initializer_range", 0.02)) if use_mlp else None

    @classmethod
    def from_pretrained(
        cls,
        name: str,
        pooler: str = "avg",
        mlp: bool = True,
        mlp_only_train: bool = True,
    ) -> "SimCSEEncoder":
        """Load the backbone with `AutoModel` from a local folder, `default` or a hub id."""
        backbone = AutoModel.from_pretrained(resolve_model(name))
        return cls(backbone, pooler=pooler, mlp=mlp, mlp_only_train=mlp_only_train)

    @property
    def hidden_size(self) -> int:
        return int(self.backbone.config.hidden_size)

    @property
    def inference_uses_mlp(self) -> bool:
        return self.mlp is not None and not self.mlp_only_train

    def _pooled(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        needs_layers = self.pooler in _LAYER_POOLERS
        out = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=needs_layers,
            return_dict=True,
        )
        return pool(self.pooler, attention_mask, out.last_hidden_state, out.hidden_states if needs_layers else None)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Training representation: (N, T) ids and mask -> (N, H)."""
        z = self._pooled(input_ids, attention_mask)
        return self.mlp(z) if self.mlp is not None else z

    def embed(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Inference representation: (N, T) -> (N, H); what the exported model computes."""
        z = self._pooled(input_ids, attention_mask)
        return self.mlp(z) if self.inference_uses_mlp else z


def _base_st_info(base_model: str) -> tuple[int, bool]:
    """(inference max_seq_length, whether the base pipeline ends with Normalize) of the base model."""
    st = load_sentence_transformer(base_model, device="cpu")
    normalize = any(isinstance(m, Normalize) for m in st)
    return int(st.max_seq_length), normalize


def export_sentence_transformer(
    encoder: SimCSEEncoder,
    tokenizer,
    out_dir: Path | str,
    base_model: str,
    max_seq_length: int | None = None,
) -> Path:
    """Write the inference model to `out_dir` as a sentence-transformers folder, atomically.

    `max_seq_length=None` keeps the base model's own inference length (256 for all-MiniLM-L6-v2),
    never the training length: truncating evaluation sentences to 32 tokens costs STS points.
    A base model whose sentence-transformers pipeline normalises its output keeps that module.
    """
    base_len, base_normalizes = _base_st_info(base_model)
    seq_len = max_seq_length or base_len
    backbone = encoder.backbone
    if getattr(backbone.config, "_attn_implementation", None) == FAST_ATTENTION:
        backbone.set_attn_implementation("sdpa")  # a training-only function: never saved
    n_layers = int(backbone.config.num_hidden_layers)
    hidden = encoder.hidden_size
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix=".backbone-", dir=out_dir.parent if out_dir.parent.exists() else None) as raw:
        old_flag = getattr(backbone.config, "output_hidden_states", False)
        backbone.config.output_hidden_states = encoder.pooler in _LAYER_POOLERS
        try:
            backbone.save_pretrained(raw, safe_serialization=True)
        finally:
            backbone.config.output_hidden_states = old_flag
        # A fast tokenizer keeps the truncation and padding of its last call (a training batch at
        # 32 tokens, or a dev evaluation) and saves them in tokenizer.json: save the inference
        # state instead, so the export does not depend on what ran last (a run resumed at its end
        # evaluates nothing) and a plain `tokenizers` user truncates at the model's length.
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            backend.no_padding()
            backend.enable_truncation(max_length=seq_len)
        tokenizer.save_pretrained(raw)
        modules: list[nn.Module] = [Transformer(raw, max_seq_length=seq_len)]
        if encoder.pooler == "avg_first_last":
            weights = torch.zeros(n_layers)
            weights[0] = weights[-1] = 1.0
            modules.append(WeightedLayerPooling(hidden, num_hidden_layers=n_layers, layer_start=1,
                                                layer_weights=nn.Parameter(weights)))
        elif encoder.pooler == "avg_top2":
            modules.append(WeightedLayerPooling(hidden, num_hidden_layers=n_layers, layer_start=n_layers - 1,
                                                layer_weights=nn.Parameter(torch.ones(2))))
        mode = "cls" if encoder.pooler in ("cls", "cls_before_pooler") else "mean"
        modules.append(Pooling(hidden, pooling_mode=mode))
        if encoder.inference_uses_mlp:
            lin = encoder.mlp.dense
            modules.append(Dense(hidden, hidden, bias=True, activation_function=nn.Tanh(),
                                 init_weight=lin.weight.detach().clone(), init_bias=lin.bias.detach().clone()))
        if base_normalizes:
            modules.append(Normalize())
        st = SentenceTransformer(modules=modules, device="cpu")
        with atomic_path(out_dir) as tmp:
            st.save(str(tmp), safe_serialization=True)
            info = {"pooler": encoder.pooler, "mlp_in_inference": encoder.inference_uses_mlp,
                    "max_seq_length": seq_len, "base_model": str(base_model)}
            (tmp / "simcse_export.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
            stray = [p.name for p in tmp.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
            if stray:
                raise RuntimeError(f"{out_dir}: export wrote non-safetensors weights {stray}")
    return out_dir
