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

import importlib
import inspect
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


def fast_dropout(x: Tensor, p: float) -> Tensor:
    """x * m / (1 - p), m_i = [u_i >= q]: u_i a 16-bit slice of 64-bit draws, q = round(p * 2^16)."""
    n = x.numel()
    draws = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=x.device)
    keep = draws.view(torch.int16)[:n].view(x.shape) >= int(round(p * 65536)) - 32768  # int16: [-2^15, 2^15)
    return x * (keep.to(x.dtype) * (1.0 / (1.0 - p)))


class FastDropout(nn.Module):
    """Inverted dropout, y = x * m / (1 - p) with m_i ~ Bernoulli(1 - p), from 16-bit random draws.

    Each mask element is one 16-bit slice u of 64-bit draws from torch's generator; m = [u >= q]
    with q = round(p * 65536), so the keep probability is 1 - q / 65536 (|error| <= 2^-17: p = 0.1
    keeps with 0.899994). On CPU this is ~3x cheaper than `torch.bernoulli_` (4 mask elements per
    draw), and it draws from the same seeded generator, so checkpointed RNG state still replays a
    run exactly. The attribute `p` is kept: Hugging Face attention layers read `dropout.p`.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        return fast_dropout(x, self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


FAST_ATTENTION = "simcse_sdpa"

# The transformers internals FAST_ATTENTION is built on (not public API: they change between
# releases). `fast_attention_supported` checks each of them before anything is registered.
_SDPA_POSITIONAL = ("module", "query", "key", "value", "attention_mask")  # how transformers calls an attention function
_SDPA_KEYWORDS = ("dropout", "scaling")
_fallback_warned: set[str] = set()


def _transformers():
    """The `transformers` package as imported now (`sys.modules`): what `from transformers import X`
    sees. (In transformers 5.0.0, importing `transformers.trainer` replaces that module object.)"""
    return importlib.import_module("transformers")


def _changed(name: str, what: str) -> tuple[bool, str]:
    return False, f"transformers {_transformers().__version__} changed {name}: {what}"


def fast_attention_supported() -> tuple[bool, str]:
    """(True, "") when the installed transformers has the internals `FAST_ATTENTION` relies on.

    Checked, without side effects (no registration, no random draws):
    - `transformers.integrations.sdpa_attention.sdpa_attention_forward`, called by
      `_fast_dropout_attention`: positional parameters (module, query, key, value,
      attention_mask), keywords `dropout` and `scaling`, **kwargs, no other required parameter;
      and still the function `AttentionInterface` runs for "sdpa";
    - `transformers.masking_utils.sdpa_mask`, registered as our mask function: still the mask
      function `AttentionMaskInterface` uses for "sdpa" (so our masks are SDPA's);
    - `AttentionInterface.register(key, value)` and `AttentionMaskInterface.register(key, value)`;
    - `PreTrainedModel.set_attn_implementation(attn_implementation)`, which switches a model.

    Otherwise (False, "transformers X changed NAME: WHAT").
    """
    try:
        sdpa_module = importlib.import_module("transformers.integrations.sdpa_attention")
    except ImportError as e:
        return _changed("transformers.integrations.sdpa_attention", f"cannot be imported ({e})")
    forward = getattr(sdpa_module, "sdpa_attention_forward", None)
    name = "integrations.sdpa_attention.sdpa_attention_forward"
    if not callable(forward):
        return _changed(name, "no longer exists")
    try:
        params = list(inspect.signature(forward).parameters.values())
    except (TypeError, ValueError) as e:
        return _changed(name, f"has no inspectable signature ({e})")
    positional = tuple(p.name for p in params
                       if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))[:len(_SDPA_POSITIONAL)]
    if positional != _SDPA_POSITIONAL:
        return _changed(name, f"its positional parameters are {positional}, expected {_SDPA_POSITIONAL}")
    named = {p.name: p for p in params}
    for kw in _SDPA_KEYWORDS:
        if kw not in named or named[kw].kind not in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                     inspect.Parameter.KEYWORD_ONLY):
            return _changed(name, f"it takes no keyword {kw!r}")
    if not any(p.kind == p.VAR_KEYWORD for p in params):
        return _changed(name, "it no longer takes **kwargs")
    required = [p.name for p in params if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                and p.name not in _SDPA_POSITIONAL]
    if required:
        return _changed(name, f"new required parameters {required}")

    try:
        masking = importlib.import_module("transformers.masking_utils")
    except ImportError as e:
        return _changed("transformers.masking_utils", f"cannot be imported ({e})")
    sdpa_mask = getattr(masking, "sdpa_mask", None)
    if not callable(sdpa_mask):
        return _changed("masking_utils.sdpa_mask", "no longer exists")

    for iface_name, sdpa_fn, fn_name in (("AttentionInterface", forward, name),
                                         ("AttentionMaskInterface", sdpa_mask, "masking_utils.sdpa_mask")):
        iface = getattr(_transformers(), iface_name, None)
        register = getattr(iface, "register", None)
        if not callable(register):
            return _changed(f"{iface_name}.register", "no longer exists")
        try:
            reg_params = [p.name for p in inspect.signature(register).parameters.values()]
        except (TypeError, ValueError) as e:
            return _changed(f"{iface_name}.register", f"has no inspectable signature ({e})")
        if reg_params[:2] != ["key", "value"]:
            return _changed(f"{iface_name}.register", f"its parameters are {reg_params}, expected ['key', 'value']")
        try:
            current = iface().get("sdpa")
        except Exception as e:  # noqa: BLE001 - any failure means the interface changed
            return _changed(iface_name, f"cannot be read as a mapping ({type(e).__name__}: {e})")
        if current is not sdpa_fn:
            return _changed(iface_name, f"its 'sdpa' entry is {current!r}, no longer {fn_name}")

    set_impl = getattr(getattr(_transformers(), "PreTrainedModel", None), "set_attn_implementation", None)
    if not callable(set_impl):
        return _changed("PreTrainedModel.set_attn_implementation", "no longer exists")
    try:
        impl_params = [p.name for p in inspect.signature(set_impl).parameters.values()][1:2]
    except (TypeError, ValueError) as e:
        return _changed("PreTrainedModel.set_attn_implementation", f"has no inspectable signature ({e})")
    if impl_params != ["attn_implementation"]:
        return _changed("PreTrainedModel.set_attn_implementation",
                        f"its first parameter is {impl_params}, expected ['attn_implementation']")
    return True, ""


def _fast_dropout_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Attention with FastDropout on the probabilities (CPU training); anything else goes to SDPA.

        out = dropout(softmax(q k^T * scaling + mask)) v      q, k, v: (N, heads, T, d)

    What `scaled_dot_product_attention` computes, with the dropout mask drawn by `fast_dropout`
    (torch's CPU SDPA draws it with the slower `bernoulli_`). Causal, grouped-query, CUDA, eval
    and dropout-free calls are passed to Hugging Face's SDPA function unchanged.
    """
    # A transformers internal, vetted by fast_attention_supported() before this is registered.
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if (dropout == 0.0 or not module.training or query.device.type != "cpu" or key.shape[1] != query.shape[1]
            or kwargs.get("is_causal") or getattr(module, "is_causal", False)):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    scores = torch.matmul(query, key.transpose(-1, -2)) * (query.shape[-1] ** -0.5 if scaling is None else scaling)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    probs = fast_dropout(torch.softmax(scores, dim=-1), dropout).to(value.dtype)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


def register_fast_attention() -> str:
    """Register `_fast_dropout_attention` (with SDPA's masks) with transformers; idempotent.

    Raises RuntimeError when `fast_attention_supported()` says the internals changed.
    """
    ok, reason = fast_attention_supported()
    if not ok:
        raise RuntimeError(f"{reason}; cannot register {FAST_ATTENTION!r}")
    # transformers internals, vetted just above.
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(FAST_ATTENTION, _fast_dropout_attention)
    AttentionMaskInterface.register(FAST_ATTENTION, sdpa_mask)
    return FAST_ATTENTION


def use_fast_dropout(module: nn.Module) -> int:
    """Replace every `nn.Dropout` inside `module` by `FastDropout` with the same p; returns how many.

    Works on any architecture (modules are matched by type, not name); dropout has no weights, so
    state dicts and exported models are unchanged. Attention-probability dropout is not a module:
    see `use_fast_attention_dropout`.
    """
    swapped = 0
    for parent in module.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, FastDropout(child.p).train(child.training))
                swapped += 1
    return swapped


def use_fast_attention_dropout(backbone: nn.Module) -> str | None:
    """Switch a backbone that runs SDPA to `FAST_ATTENTION`; returns the implementation to restore.

    Only models on Hugging Face's attention interface with `sdpa` selected are switched (None
    otherwise). Call `restore_attention(backbone, previous)` before saving the model.

    When the installed transformers changed the internals this relies on (see
    `fast_attention_supported`), a warning is logged once and None is returned: the model keeps
    `sdpa`, i.e. torch's native attention dropout (same model, slower on CPU).
    """
    config = getattr(backbone, "config", None)
    previous = getattr(config, "_attn_implementation", None)
    if previous != "sdpa" or not hasattr(backbone, "set_attn_implementation"):
        return None
    ok, reason = fast_attention_supported()
    if not ok:
        if reason not in _fallback_warned:
            _fallback_warned.add(reason)
            log.warning("%s; attention dropout falls back to torch's native SDPA dropout (slower on CPU). "
                        "Update simcse_ops/model.py's fast attention or pin an older transformers.", reason)
        return None
    register_fast_attention()
    try:
        backbone.set_attn_implementation(FAST_ATTENTION)
    except (ValueError, NotImplementedError):  # a model that cannot take a registered implementation
        return None
    return previous


def restore_attention(backbone: nn.Module, previous: str | None) -> None:
    if previous is not None:
        backbone.set_attn_implementation(previous)


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
