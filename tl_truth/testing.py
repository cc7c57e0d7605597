"""Tiny random models built from configs, on both backends: no downloads, loaded in a second.

For trying the library without a real model, for doctests and for unit tests. The weights are
random, so answers are gibberish; shapes, hooks and the whole pipeline are real. The
tokenizer is a 400-token byte-level BPE trained on a few sentences. `thread_ranks` gives the
ranks of a data-parallel run as threads of one process (`tl_truth.parallel`), for tests.

>>> from tl_truth.testing import tiny_model
>>> model = tiny_model("llama")
>>> model.cfg.n_layers, model.cfg.d_model
(2, 32)
"""

from __future__ import annotations

import functools
import tempfile
import threading

import torch

from tl_truth.compat import has_hooked_transformer
from tl_truth.models import from_hf
from tl_truth.parallel import Ranks

ARCHS = ("gpt2", "llama", "gemma3")
BACKENDS = ("bridge", "hooked") if has_hooked_transformer() else ("bridge",)

_CORPUS = [
    "Q: What is the capital of France?\nA: The capital of France is Paris.",
    "Q: What is 12 + 30?\nA: 12 + 30 = 42.",
    "Q: In which country is Tokyo?\nA: Tokyo is in Japan. São Paulo, Zürich, Kraków, 東京.",
    "The quick brown fox jumps over the lazy dog. 0123456789 !?.,;:'\"()[]{}",
] * 4


@functools.cache
def tiny_tokenizer():
    """A 400-token byte-level BPE tokenizer trained on a few sentences, saved to a temp dir."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        _CORPUS, vocab_size=400, min_frequency=1, special_tokens=["<bos>", "<eos>", "<pad>"]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )
    # TransformerLens re-loads the tokenizer from its `name_or_path`: give it a real directory.
    directory = tempfile.mkdtemp(prefix="tl_truth_tiny_tok_")
    tok.save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory)


def tiny_hf(arch: str = "llama", seed: int = 0):
    """A tiny random Hugging Face causal LM of `arch` and its tokenizer (eval mode)."""
    from transformers import (
        Gemma3ForCausalLM,
        Gemma3TextConfig,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    tok = tiny_tokenizer()
    v = len(tok)
    torch.manual_seed(seed)
    common = dict(
        vocab_size=v,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    if arch == "gpt2":
        m = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=1024, **common))
    elif arch == "llama":  # grouped-query attention: 4 query heads, 2 KV heads
        m = LlamaForCausalLM(
            LlamaConfig(
                num_hidden_layers=2,
                hidden_size=32,
                intermediate_size=64,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=1024,
                **common,
            )
        )
    elif arch == "gemma3":
        m = Gemma3ForCausalLM(
            Gemma3TextConfig(
                num_hidden_layers=2,
                hidden_size=32,
                intermediate_size=64,
                num_attention_heads=4,
                num_key_value_heads=1,
                head_dim=8,
                query_pre_attn_scalar=8,
                max_position_embeddings=1024,
                sliding_window=16,
                layer_types=["sliding_attention", "full_attention"],
                **common,
            )
        )
    else:
        raise ValueError(arch)
    m.config.architectures = [type(m).__name__]
    return m.eval(), tok


@functools.cache
def tiny_model(arch: str = "llama", backend: str | None = None):
    """A cached tiny random model, wrapped like `load_model` wraps a real one.

    Args:
        arch: one of `ARCHS` ("gpt2", "llama" with grouped-query attention, "gemma3").
        backend: "bridge" (TransformerBridge) or "hooked" (HookedTransformer, TL 3.x only);
            None takes the first of `BACKENDS`.

    Returns:
        The model (2 layers, d_model 32). The same object is returned for the same arguments.

    >>> tiny_model("gpt2").cfg.n_layers
    2
    """
    backend = backend or BACKENDS[0]
    hf, tok = tiny_hf(arch)
    return from_hf(hf, tok, backend=backend, name=f"tiny-{arch}", device="cpu", chat=False)


# ---------------------------------------------------------------------------------------------
# Several ranks in one process (threads): for tests and examples


class _ThreadExchange:
    def __init__(self, world: int):
        self.slots: list[str | None] = [None] * world
        self.barrier = threading.Barrier(world, timeout=600)

    def __call__(self, rank: int, text: str) -> list[str]:
        self.slots[rank] = text
        self.barrier.wait()  # everyone has written
        out = list(self.slots)
        self.barrier.wait()  # everyone has read: the slots may be reused
        return out  # type: ignore[return-value]


def thread_ranks(world: int) -> list[Ranks]:
    """`world` ranks whose exchanges work between threads of one process (tests, examples).

    >>> from concurrent.futures import ThreadPoolExecutor
    >>> ranks = thread_ranks(2)
    >>> with ThreadPoolExecutor(2) as pool:
    ...     list(pool.map(lambda r: r.gather(r.rank * 10), ranks))
    [[0, 10], [0, 10]]
    """
    exchange = _ThreadExchange(world)
    return [Ranks(r, world, r, exchange) for r in range(world)]
