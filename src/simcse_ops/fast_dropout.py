"""FastDropout: SimCSE's dropout noise from 16-bit random draws, for CPU training (opt-in).

SimCSE's positives are the same sentence under two dropout masks, so a training step draws a mask
element for every hidden unit and every attention probability of both passes. torch's CPU dropout
(`bernoulli_`, and SDPA's attention dropout) draws one random number per element; `fast_dropout`
slices 4 mask elements out of each 64-bit draw of the same seeded generator:

    m_i = [u_i >= q],  u_i a 16-bit slice,  q = round(p * 2^16),  y = x * m / (1 - p)

The keep probability is 1 - q / 2^16 (|error| <= 2^-17). The loss and its gradients, for a given
mask, are exactly those of torch's dropout (tests/test_trainer.py); only the random stream differs.

Two pieces, switched on by `trainer.configure_dropout` when a variant's `dropout_impl` is `fast`
(or `auto` on CPU):
- `use_fast_dropout` swaps every `nn.Dropout` module for `FastDropout` (no weights: state dicts
  and exports are unchanged);
- `use_fast_attention_dropout` switches a backbone running SDPA to `FAST_ATTENTION`, an attention
  function registered with transformers. It is built on transformers internals, so
  `fast_attention_supported` checks each of them first; when they changed, a warning is logged
  once and the backbone keeps SDPA (torch's attention dropout: same model, slower).

What it buys and costs, measured over 3 seeds per method (benchmarks/dropout_impl.py): README,
Training > Results: no measurable STS cost, training 1.26x faster on x86 AMX.
"""

from __future__ import annotations

import importlib
import inspect
import logging

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)


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
                        "Update simcse_ops/fast_dropout.py's fast attention or pin an older transformers.", reason)
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
