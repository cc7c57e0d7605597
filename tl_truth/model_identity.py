"""What tl_truth needs to know about a loaded model: its backend, weights and hook names.

tl_truth works with a `HookedTransformer` (TransformerLens 3.x) or a `TransformerBridge`
(3.x / 4.x), with or without the bridge's compatibility mode. Both expose the same hook names
(`blocks.{l}.hook_resid_post`, ...), a tokenizer, a cfg and `hooks()`, so that is the protocol
(`TLModel`). Activations differ between backends and weight-processing modes, so every model
gets a `ModelInfo` (backend, processing mode, weight fingerprint) that travels with everything we
save. Loading models lives in `tl_truth.model_loading`; `tl_truth.models` re-exports both.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import torch

Backend = Literal["bridge", "hooked"]
HOOK_KINDS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")


@runtime_checkable
class TLModel(Protocol):
    """What tl_truth uses: both HookedTransformer and TransformerBridge satisfy it."""

    cfg: Any
    tokenizer: Any

    def hooks(self, fwd_hooks=..., bwd_hooks=..., reset_hooks_end=True, clear_contexts=False): ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class ModelInfo:
    """Identity of the activations a model produces. Saved next to every store and probe."""

    name: str
    backend: Backend
    processing: str  # "hf" (raw HF weights), "compat" (bridge compat mode), "ht-processed"...
    fingerprint: str
    n_layers: int
    d_model: int
    chat: bool

    def to_dict(self) -> dict:
        return asdict(self)

    def differences(self, other: ModelInfo) -> list[str]:
        """Human-readable list of the fields that make activations incomparable."""
        return [
            f"{k}: {getattr(self, k)!r} != {getattr(other, k)!r}"
            for k in ("fingerprint", "backend", "processing", "n_layers", "d_model")
            if getattr(self, k) != getattr(other, k)
        ]


# ---------------------------------------------------------------------------------------------
# Identity of a loaded model


def backend_of(model: Any) -> Backend:
    names = {c.__name__ for c in type(model).__mro__}
    if "TransformerBridge" in names:
        return "bridge"
    if "HookedTransformer" in names:
        return "hooked"
    raise TypeError(
        f"tl_truth needs a TransformerLens HookedTransformer or TransformerBridge, "
        f"got {type(model).__name__}. Use tl_truth.load_model() or wrap your HF model with "
        f"TransformerBridge.boot_transformers(name, hf_model=model, tokenizer=tokenizer)."
    )


def processing_of(model: Any) -> str:
    if backend_of(model) == "bridge":
        return "compat" if getattr(model, "compatibility_mode", False) else "hf"
    cfg = model.cfg
    flags = [
        ("fold_ln", getattr(cfg, "normalization_type", None) in ("LNPre", "RMSPre")),
        ("center_writing", bool(getattr(model, "_tl_truth_center_writing", False))),
    ]
    on = [name for name, is_on in flags if is_on]
    return "ht:" + ("+".join(on) if on else "raw")


def fingerprint(model: torch.nn.Module) -> str:
    """Cheap, stable hash of the weights: names, shapes and a strided sample of each tensor.

    Cached on the module: weights are not expected to change under us (steering uses hooks).
    """
    cached = getattr(model, "_tl_truth_fingerprint", None)
    if cached is not None:
        return cached
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in sorted(model.state_dict().items()):
            if not torch.is_tensor(p) or not p.is_floating_point():
                continue
            flat = p.detach().reshape(-1)
            step = max(1, flat.numel() // 4096)
            sample = flat[::step][:4096].to(torch.float64).cpu()
            h.update(f"{name}:{tuple(p.shape)}:".encode())
            h.update(sample.numpy().tobytes())
            h.update(f"{float(flat.double().sum()):.6e}".encode())
    value = h.hexdigest()[:16]
    object.__setattr__(model, "_tl_truth_fingerprint", value)
    return value


def model_info(model: Any) -> ModelInfo:
    cached = getattr(model, "_tl_truth_info", None)
    if isinstance(cached, ModelInfo):
        return cached
    tok = model.tokenizer
    name = getattr(model, "_tl_truth_name", None) or str(
        getattr(model.cfg, "model_name", None) or type(model).__name__
    )
    info = ModelInfo(
        name=name,
        backend=backend_of(model),
        processing=processing_of(model),
        fingerprint=fingerprint(model),
        n_layers=int(model.cfg.n_layers),
        d_model=int(model.cfg.d_model),
        chat=bool(getattr(model, "_tl_truth_chat", getattr(tok, "chat_template", None))),
    )
    object.__setattr__(model, "_tl_truth_info", info)
    return info


def hook_name(kind: str, layer: int, n_layers: int | None = None) -> str:
    """`("resid_post", 3)` -> `"blocks.3.hook_resid_post"`; the names both backends share."""
    if kind not in HOOK_KINDS:
        raise ValueError(f"unknown hook kind {kind!r}; choose from {HOOK_KINDS}")
    if n_layers is not None and not (0 <= layer < n_layers):
        raise ValueError(f"layer {layer} out of range for a {n_layers}-layer model")
    return f"blocks.{layer}.hook_{kind}"


def model_device(model: Any) -> torch.device:
    return next(model.parameters()).device
