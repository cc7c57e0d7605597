"""Version shims for TransformerLens / transformers, applied only when needed.

transformers 5.24 renamed the attention modules' KV-cache keyword from `past_key_values` to
`cache`. TransformerLens 3.9 / 4.3 replace HF attention with `AttentionBridge`, whose
`_update_kv_cache` only reads `past_key_values` / `layer_past`: under 5.24 the cache is never
written and cached generation on a TransformerBridge is garbage while forward passes stay exact.
`patch_bridge_kv_cache()` maps `cache` back before the update. It is idempotent, a no-op on
older transformers, and tested by comparing cached greedy output with plain HF greedy output.
"""

from __future__ import annotations

import functools
import importlib.metadata

from packaging.version import Version

_PATCHED_ATTR = "_tl_truth_cache_shim"


def transformers_version() -> Version:
    """The installed transformers version.

    Returns:
        A `packaging.version.Version` (compare it with `Version("5.24")`).

    >>> transformers_version() > Version("4.0")
    True
    """
    return Version(importlib.metadata.version("transformers"))


def transformer_lens_version() -> Version:
    """The installed TransformerLens version.

    Returns:
        A `packaging.version.Version`.

    >>> transformer_lens_version() >= Version("3.0")
    True
    """
    return Version(importlib.metadata.version("transformer-lens"))


def has_hooked_transformer() -> bool:
    """Whether `backend="hooked"` is available.

    TL 4.x removed HookedTransformer (importing it raises ImportError, not AttributeError).

    Returns:
        True under TransformerLens 3.x, False from 4.0 on.

    >>> has_hooked_transformer() == (transformer_lens_version() < Version("4.0.0"))
    True
    """
    return transformer_lens_version() < Version("4.0.0")


def needs_cache_shim() -> bool:
    """Whether this transformers renamed the KV-cache keyword (5.24 and later).

    Returns:
        True when `patch_bridge_kv_cache` has something to fix.

    >>> needs_cache_shim() == (transformers_version() >= Version("5.24.0.dev0"))
    True
    """
    return transformers_version() >= Version("5.24.0.dev0")


def patch_bridge_kv_cache(force: bool = False) -> bool:
    """Make AttentionBridge read the KV cache under its post-5.24 name. Returns True if patched.

    Idempotent; `load_model` and `from_hf` call it, so you only need it for a bridge you built
    yourself.

    Args:
        force: patch even on a transformers that does not need it (the shim is harmless there).

    Returns:
        True if `AttentionBridge._update_kv_cache` is (now, or already) patched, False when
        nothing needed patching or this TransformerLens has no bridge.

    >>> patch_bridge_kv_cache() == needs_cache_shim()
    True
    >>> patch_bridge_kv_cache() == patch_bridge_kv_cache()  # calling it again changes nothing
    True
    """
    if not (force or needs_cache_shim()):
        return False
    try:
        from transformer_lens.model_bridge.generalized_components.attention import (
            AttentionBridge,
        )
    except ImportError:  # no bridge in this TransformerLens: nothing to fix
        return False
    original = AttentionBridge._update_kv_cache
    if getattr(original, _PATCHED_ATTR, False):
        return True

    @functools.wraps(original)
    def _update_kv_cache(self, k, v, **kwargs):
        if (
            kwargs.get("past_key_values") is None
            and kwargs.get("layer_past") is None
            and kwargs.get("cache") is not None
        ):
            kwargs["past_key_values"] = kwargs.pop("cache")
        return original(self, k, v, **kwargs)

    setattr(_update_kv_cache, _PATCHED_ATTR, True)
    AttentionBridge._update_kv_cache = _update_kv_cache
    return True
