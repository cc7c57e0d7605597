"""Model protocol: hook names, identity (backend, processing, fingerprint), loading errors."""

import pytest
import torch

from tl_truth.compat import has_hooked_transformer, patch_bridge_kv_cache
from tl_truth.models import HOOK_KINDS, hook_name, load_model, model_info

pytestmark = pytest.mark.backend


def test_hook_names_exist_on_both_backends(tiny):
    names = set(tiny.hook_dict) if hasattr(tiny, "hook_dict") else set()
    for kind in HOOK_KINDS:
        for layer in range(tiny.cfg.n_layers):
            assert hook_name(kind, layer) in names


def test_hook_name_validation():
    assert hook_name("resid_post", 3) == "blocks.3.hook_resid_post"
    with pytest.raises(ValueError, match="unknown hook kind"):
        hook_name("resid", 0)
    with pytest.raises(ValueError, match="out of range"):
        hook_name("resid_post", 5, n_layers=2)


def test_model_info_records_backend_and_processing(tiny):
    info = model_info(tiny)
    assert info.backend in ("bridge", "hooked")
    assert info.processing == ("hf" if info.backend == "bridge" else "ht:fold_ln+center_writing")
    assert info.n_layers == tiny.cfg.n_layers and len(info.fingerprint) == 16
    assert info.differences(info) == []


def test_fingerprint_tells_weights_apart():
    from tiny import tiny_hf

    from tl_truth.models import fingerprint

    a, _ = tiny_hf("llama", seed=0)
    b, _ = tiny_hf("llama", seed=1)
    assert fingerprint(a) != fingerprint(b)
    a2, _ = tiny_hf("llama", seed=0)
    assert fingerprint(a) == fingerprint(a2)


def test_processing_mode_is_part_of_identity():
    from tiny import tiny_hf

    from tl_truth.models import from_hf

    hf, tok = tiny_hf("gpt2", seed=3)
    plain = model_info(from_hf(hf, tok, "bridge", name="t"))
    hf2, tok2 = tiny_hf("gpt2", seed=3)
    compat = model_info(from_hf(hf2, tok2, "bridge", name="t", compatibility_mode=True))
    assert plain.processing == "hf" and compat.processing == "compat"
    assert any(d.startswith("processing") for d in plain.differences(compat))


def test_load_model_passes_models_through_and_rejects_others(tiny):
    assert load_model(tiny) is tiny
    with pytest.raises(TypeError):
        load_model(torch.nn.Linear(2, 2))


def test_load_model_unknown_name_is_clear(tmp_path):
    with pytest.raises(ValueError, match="not a built-in name"):
        load_model("no-such-model-anywhere-xyz")
    bad = tmp_path / "weights.bin"
    bad.write_bytes(b"0")
    with pytest.raises(ValueError, match="not a .gguf"):
        load_model(str(bad))


def test_load_model_from_local_hf_directory(tmp_path):
    from tiny import tiny_hf

    hf, tok = tiny_hf("llama", seed=5)
    hf.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    m = load_model(str(tmp_path))
    ids = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        assert torch.allclose(m(ids), hf(ids).logits, atol=1e-5)


def test_cache_shim_maps_renamed_argument(monkeypatch):
    from transformer_lens.model_bridge.generalized_components import attention

    seen = {}

    def fake_update(self, k, v, **kwargs):
        seen.update(kwargs)
        return k, v

    monkeypatch.setattr(attention.AttentionBridge, "_update_kv_cache", fake_update)
    assert patch_bridge_kv_cache(force=True)
    marker = object()
    attention.AttentionBridge._update_kv_cache(None, 1, 2, cache=marker)
    assert seen["past_key_values"] is marker and "cache" not in seen
    seen.clear()
    attention.AttentionBridge._update_kv_cache(None, 1, 2, past_key_values=marker)
    assert seen == {"past_key_values": marker}
    assert patch_bridge_kv_cache(force=True)  # idempotent


# -- reduced precision and models across devices ------------------------------------------


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3"])
def test_bfloat16_generation_against_hf_bfloat16(arch):
    """Parity in bfloat16 (CPU): token-exact against HF greedy on GPT-2 and Llama; on Gemma-3
    the bf16 attention kernels HF picks with and without a mask differ, so a near-tie can flip:
    there the first-step log-probabilities agree within 0.05."""
    import copy

    from tiny import tiny_hf

    from tl_truth.answers.generation import GenerationConfig, generate_ids
    from tl_truth.models import from_hf

    hf, tok = tiny_hf(arch)
    hf16 = copy.deepcopy(hf).to(torch.bfloat16)
    model = from_hf(copy.deepcopy(hf16), tok, "bridge", name=f"bf16-{arch}", device="cpu")
    assert next(model.parameters()).dtype == torch.bfloat16
    prompts = [[0, 5, 9, 13], [0, 7], [0, 20, 21, 22, 23, 24, 25]]
    got = generate_ids(
        model, prompts, GenerationConfig(max_new_tokens=10, batch_size=3), progress=False
    )
    for p, g in zip(prompts, got, strict=True):
        out = hf16.generate(
            torch.tensor([p]),
            max_new_tokens=10,
            do_sample=False,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        ref = out[0, len(p) :].tolist()
        ref = ref[: ref.index(tok.eos_token_id)] if tok.eos_token_id in ref else ref
        with torch.no_grad():
            lp = torch.log_softmax(hf16(torch.tensor([p])).logits[0, -1].float(), -1)
        first = g[0]["answer_token_ids"][0]
        assert abs(g[0]["token_logprobs"][0] - float(lp[first])) < 0.05
        if arch != "gemma3":
            assert g[0]["answer_token_ids"] == ref


@pytest.mark.skipif(not has_hooked_transformer(), reason="HookedTransformer needs TL 3.x")
def test_hooked_bfloat16_is_processed_in_float32_then_cast(tmp_path):
    from tiny import tiny_hf

    hf, tok = tiny_hf("llama", seed=5)
    hf.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    m32 = load_model(str(tmp_path), backend="hooked", device="cpu")
    m16 = load_model(str(tmp_path), backend="hooked", device="cpu", dtype="bfloat16")
    assert m16.cfg.dtype == torch.bfloat16 and next(m16.parameters()).dtype == torch.bfloat16
    ids = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        a, b = m32(ids), m16(ids).float()
    assert (a - b).abs().max() < 0.05 * a.abs().max()


def test_device_mapped_hf_model_stays_put_and_matches(tmp_path):
    """The device-map path on CPU: an HF model placed by an explicit per-module map is wrapped
    without being moved (`device=None` to the bridge), inputs go to the embedding's device,
    and generation and capture equal the unmapped model's. (HF drops a map whose modules all
    sit on one device, so the map is attached as accelerate would leave it on several.)"""
    import copy

    from tiny import tiny_hf

    from tl_truth.answers.generation import GenerationConfig, generate_ids
    from tl_truth.models import from_hf, model_device
    from tl_truth.probing.activations import capture_batch

    hf, tok = tiny_hf("llama")
    mapped_hf = copy.deepcopy(hf)
    mapped_hf.hf_device_map = {
        "model.embed_tokens": "cpu",
        "model.layers.0": "cpu",
        "model.layers.1": "cpu",
        "model.norm": "cpu",
        "model.rotary_emb": "cpu",
        "lm_head": "cpu",
    }
    mapped = from_hf(mapped_hf, tok, "bridge", name="mapped", device="cuda:7")  # ignored
    plain = from_hf(copy.deepcopy(hf), tok, "bridge", name="plain", device="cpu")
    assert model_device(mapped).type == "cpu"
    cfg = GenerationConfig(max_new_tokens=6, batch_size=2)
    prompts = [[0, 5, 9, 13], [0, 7]]
    assert generate_ids(mapped, prompts, cfg, progress=False) == generate_ids(
        plain, prompts, cfg, progress=False
    )
    pos = torch.tensor([[1, 3], [0, 1]])
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    torch.testing.assert_close(
        capture_batch(mapped, prompts, pos, hooks), capture_batch(plain, prompts, pos, hooks)
    )


def test_device_map_options_are_checked():
    with pytest.raises(ValueError, match="n_devices"):
        load_model("x", backend="hooked", device_map="auto")
    with pytest.raises(ValueError, match="dtype must be one of"):
        from tl_truth.models.loading import resolve_dtype

        resolve_dtype("int8")
