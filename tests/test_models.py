"""Model protocol: hook names, identity (backend, processing, fingerprint), loading errors."""

import pytest
import torch

from tl_truth.compat import patch_bridge_kv_cache
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
