"""A `HookedTransformer` from an already-loaded HF model, without the Hugging Face hub.

`HookedTransformer.from_pretrained` looks the model's name up among TransformerLens' official
names, which needs the hub for anything it does not know. `from_hf(..., backend="hooked")`
instead builds the config from the HF config and converts the weights itself (GPT-2,
Llama/Mistral, Gemma), then applies the usual weight processing (folded layer norms, centred
writing weights). Only TransformerLens 3.x has a HookedTransformer. Kept apart from
`tl_truth.models.loading` because this per-architecture plumbing is rarely what a reader of the
loading code is after.
"""

from __future__ import annotations

from typing import Any

from tl_truth.compat import has_hooked_transformer


def _hooked_from_hf(
    hf_model: Any,
    tokenizer: Any,
    name: str,
    device: str,
    dtype: Any = None,
    n_devices: int = 1,
) -> Any:
    """A HookedTransformer from an HF model (float32 weights processed, then cast to `dtype`;
    `n_devices` > 1 splits the blocks across that many CUDA devices, TransformerLens' way)."""
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
        extra = {"dtype": dtype} if dtype is not None else {}
        return HookedTransformer.from_pretrained(
            official,
            hf_model=hf_model,
            tokenizer=tokenizer,
            device=device,
            n_devices=n_devices,
            **extra,
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
    cfg.n_devices = n_devices
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
    if dtype is not None:
        model = model.to(dtype)  # processing ran in float32; cast after, as from_pretrained
        model.cfg.dtype = dtype
    if n_devices > 1:
        model.move_model_modules_to_device()  # blocks split across cuda:0..n-1
        return model
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
