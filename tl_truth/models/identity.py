"""What tl_truth needs to know about a loaded model: its backend, weights and hook names.

tl_truth works with a `HookedTransformer` (TransformerLens 3.x) or a `TransformerBridge`
(3.x / 4.x), with or without the bridge's compatibility mode. Both expose the same hook names
(`blocks.{l}.hook_resid_post`, ...), a tokenizer, a cfg and `hooks()`, so that is the protocol
(`TLModel`). Activations differ between backends and weight-processing modes, so every model
gets a `ModelInfo` (backend, processing mode, weight fingerprint) that travels with everything we
save. Loading models lives in `tl_truth.models.loading`; `tl_truth.models` re-exports both.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import torch

Backend = Literal["bridge", "hooked"]
"""The two TransformerLens backends tl_truth runs on."""
HOOK_KINDS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
"""Hook kinds `hook_name` knows: each is `blocks.{layer}.hook_{kind}` on both backends."""


@runtime_checkable
class TLModel(Protocol):
    """What tl_truth uses: both HookedTransformer and TransformerBridge satisfy it.

    A runtime-checkable Protocol: `isinstance(model, TLModel)` checks for `cfg`, `tokenizer`,
    `hooks` and `__call__` (nothing about their signatures).

    >>> from tl_truth.testing import tiny_model
    >>> isinstance(tiny_model("llama"), TLModel)
    True
    """

    cfg: Any
    tokenizer: Any

    def hooks(self, fwd_hooks=..., bwd_hooks=..., reset_hooks_end=True, clear_contexts=False): ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class ModelInfo:
    """Identity of the activations a model produces. Saved next to every store and probe.

    Two activations are comparable only when fingerprint, backend, processing, n_layers and
    d_model all agree (`differences` lists the ones that do not); `name` and `chat` are for
    people. Build one with `model_info(model)`.

    Args:
        name: a label for people (the built-in name, directory name or hub id).
        backend: "bridge" (TransformerBridge) or "hooked" (HookedTransformer).
        processing: the weight processing: "hf" (raw HF weights), "compat" (the bridge's
            compatibility mode), "ht:fold_ln+center_writing" and such for a HookedTransformer.
        fingerprint: `fingerprint(model)`, a 16-hex-digit hash of the weights.
        n_layers: number of transformer blocks.
        d_model: width of the residual stream.
        chat: whether prompts go through the tokenizer's chat template.

    >>> info = ModelInfo("tiny", "bridge", "hf", "abc123", n_layers=2, d_model=32, chat=False)
    >>> info.to_dict()["d_model"]
    32
    >>> info.differences(ModelInfo("tiny", "hooked", "hf", "abc123", 2, 32, False))
    ["backend: 'bridge' != 'hooked'"]
    """

    name: str
    backend: Backend
    processing: str  # "hf" (raw HF weights), "compat" (bridge compat mode), "ht-processed"...
    fingerprint: str
    n_layers: int
    d_model: int
    chat: bool

    def to_dict(self) -> dict:
        """The fields as a JSON-ready dict (what stores and probes save).

        Returns:
            `{"name": ..., "backend": ..., ..., "chat": ...}`; `ModelInfo(**d)` rebuilds it.

        >>> ModelInfo("m", "bridge", "hf", "f", 2, 32, False).to_dict()["backend"]
        'bridge'
        """
        return asdict(self)

    def differences(self, other: ModelInfo) -> list[str]:
        """Human-readable list of the fields that make activations incomparable.

        Args:
            other: the identity to compare with.

        Returns:
            One `"field: mine != theirs"` string per differing field among fingerprint, backend,
            processing, n_layers and d_model (empty when the activations are comparable).

        >>> a = ModelInfo("m", "bridge", "hf", "f", 2, 32, False)
        >>> a.differences(ModelInfo("other name", "bridge", "hf", "f", 2, 32, True))
        []
        """
        return [
            f"{k}: {getattr(self, k)!r} != {getattr(other, k)!r}"
            for k in ("fingerprint", "backend", "processing", "n_layers", "d_model")
            if getattr(self, k) != getattr(other, k)
        ]


# ---------------------------------------------------------------------------------------------
# Identity of a loaded model


def backend_of(model: Any) -> Backend:
    """Which TransformerLens backend `model` is.

    Args:
        model: a loaded model.

    Returns:
        "bridge" for a `TransformerBridge`, "hooked" for a `HookedTransformer`.

    Raises:
        TypeError: anything else (e.g. a bare Hugging Face model), with how to wrap it.

    >>> from tl_truth.testing import tiny_model
    >>> backend_of(tiny_model("llama"))
    'bridge'
    """
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
    """How the model's weights were processed, which changes its activations.

    Args:
        model: a TransformerBridge or HookedTransformer.

    Returns:
        "hf" (bridge, raw HF weights) or "compat" (bridge in compatibility mode); for a
        HookedTransformer "ht:" plus the processing applied ("fold_ln", "center_writing") or
        "ht:raw".

    >>> from tl_truth.testing import tiny_model
    >>> processing_of(tiny_model("llama"))
    'hf'
    """
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

    Args:
        model: any torch module (a TL model, or a Hugging Face one).

    Returns:
        16 hex digits; the same weights always give the same fingerprint.

    >>> from tl_truth.testing import tiny_model
    >>> fp = fingerprint(tiny_model("llama"))
    >>> len(fp), fp == fingerprint(tiny_model("llama"))
    (16, True)
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
    """The `ModelInfo` of a loaded model (computed once, then cached on the model).

    Args:
        model: a TransformerBridge or HookedTransformer (e.g. from `load_model`).

    Returns:
        Its name, backend, weight processing, fingerprint, n_layers, d_model and chat flag.

    >>> from tl_truth.testing import tiny_model
    >>> info = model_info(tiny_model("llama"))
    >>> info.name, info.backend, info.n_layers, info.d_model, info.chat
    ('tiny-llama', 'bridge', 2, 32, False)
    """
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
    """`("resid_post", 3)` -> `"blocks.3.hook_resid_post"`; the names both backends share.

    Args:
        kind: one of `HOOK_KINDS` ("resid_pre", "resid_mid", "resid_post", "attn_out",
            "mlp_out").
        layer: the block index.
        n_layers: if given, `layer` must lie in `0..n_layers-1`.

    Returns:
        The TransformerLens hook point name.

    Raises:
        ValueError: an unknown kind or a layer out of range.

    >>> hook_name("resid_post", 3)
    'blocks.3.hook_resid_post'
    >>> hook_name("mlp_out", 0, n_layers=2)
    'blocks.0.hook_mlp_out'
    """
    if kind not in HOOK_KINDS:
        raise ValueError(f"unknown hook kind {kind!r}; choose from {HOOK_KINDS}")
    if n_layers is not None and not (0 <= layer < n_layers):
        raise ValueError(f"layer {layer} out of range for a {n_layers}-layer model")
    return f"blocks.{layer}.hook_{kind}"


def model_device(model: Any) -> torch.device:
    """Where the model's inputs must go: its embedding's device.

    For a model split across devices (a device map, or `n_devices`) that is the device its
    `cfg.device` names (TransformerLens sets it to the embedding's); otherwise the device of
    its first parameter.

    Args:
        model: any torch module.

    Returns:
        A `torch.device`.

    >>> from tl_truth.testing import tiny_model
    >>> model_device(tiny_model("llama")).type
    'cpu'
    """
    cfg_device = getattr(getattr(model, "cfg", None), "device", None)
    if cfg_device is not None and getattr(model.cfg, "n_devices", 1) > 1:
        return torch.device(cfg_device)
    return next(model.parameters()).device
