"""Models: load a TransformerLens model (either backend) and describe what tl_truth needs of it.

tl_truth works with a `HookedTransformer` (TransformerLens 3.x) or a `TransformerBridge`
(3.x / 4.x), with or without the bridge's compatibility mode. Both expose the same hook names
(`blocks.{l}.hook_resid_post`, ...), a tokenizer, a cfg and `hooks()`, so that is the protocol.
Activations differ between backends and weight-processing modes, so every model gets a
`ModelInfo` (backend, processing mode, weight fingerprint) that travels with everything we save.

This module is the one place to import from: identity (`ModelInfo`, `model_info`, `hook_name`,
...) lives in `tl_truth.models.identity`, loading (`load_model`, `from_hf`, `BUILTIN_MODELS`,
...) in `tl_truth.models.loading`.
"""

from __future__ import annotations

from tl_truth.models.identity import (
    HOOK_KINDS,
    Backend,
    ModelInfo,
    TLModel,
    backend_of,
    fingerprint,
    hook_name,
    model_device,
    model_info,
    processing_of,
)
from tl_truth.models.loading import (
    BUILTIN_MODELS,
    DEFAULT_MODEL,
    BuiltinModel,
    cache_dir,
    from_hf,
    load_hf,
    load_model,
)
from tl_truth.models.loading import _builtin_gguf as _builtin_gguf
from tl_truth.models.loading import _dequantised_dir as _dequantised_dir

__all__ = [
    "BUILTIN_MODELS",
    "DEFAULT_MODEL",
    "HOOK_KINDS",
    "Backend",
    "BuiltinModel",
    "ModelInfo",
    "TLModel",
    "backend_of",
    "cache_dir",
    "fingerprint",
    "from_hf",
    "hook_name",
    "load_hf",
    "load_model",
    "model_device",
    "model_info",
    "processing_of",
]
