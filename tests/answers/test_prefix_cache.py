"""A shared prefix run once: the same next-token logits as every prompt in full, both backends."""

import pytest
import torch

from tl_truth.answers.prefix_cache import (
    branched_last_logits,
    plain_last_logits,
    shared_prefix_len,
    sliding_window,
)
from tl_truth.testing import BACKENDS, tiny_model

pytestmark = pytest.mark.backend


def _groups(head_len: int):
    head = [0] + [5, 9, 13, 7] * (head_len // 4)
    # stems of different lengths, branches of different lengths: padding at every level
    return [
        [head + [20, 21, 40], head + [20, 21, 41, 42]],
        [head + [22, 43], head + [22, 44, 45, 46]],
        [head + [23, 24, 25, 26, 47], head + [23, 24, 25, 26, 48]],
        [head + [49]],  # a group of one: its whole prompt but the last token is its stem
    ]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3"])
@pytest.mark.parametrize("head_len", [0, 12])
def test_branched_logits_equal_plain_logits(arch, head_len, monkeypatch):
    from tl_truth.answers import prefix_cache

    fallbacks = []
    monkeypatch.setattr(
        prefix_cache, "plain_last_logits", lambda *a: fallbacks.append(1) or plain_last_logits(*a)
    )
    for backend in BACKENDS:
        model = tiny_model(arch, backend)
        groups = _groups(head_len)
        out = branched_last_logits(model, groups, pad_id=0)
        # gemma3: 13 + 4 + 2 padded positions exceed its 16-token window
        assert bool(fallbacks) == (arch == "gemma3" and head_len == 12), (arch, backend)
        assert [o.shape[0] for o in out] == [2, 2, 2, 1]
        ref = plain_last_logits(model, [p for g in groups for p in g], pad_id=0)
        torch.testing.assert_close(torch.cat(out), ref, atol=2e-4, rtol=1e-4)


def test_branched_logits_without_any_shared_token():
    """No token common to all prompts and a group with no stem: the plain path answers."""
    model = tiny_model("llama")
    groups = [[[3, 4, 5], [3, 4, 6]], [[7], [8, 9]]]
    ref = plain_last_logits(model, [p for g in groups for p in g], pad_id=0)
    torch.testing.assert_close(torch.cat(branched_last_logits(model, groups, 0)), ref)


def test_branched_logits_refuses_empty_input():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="non-empty"):
        branched_last_logits(model, [[[1, 2]], []], pad_id=0)
    with pytest.raises(ValueError, match="non-empty"):
        branched_last_logits(model, [[[1, 2], []]], pad_id=0)


def test_sliding_window_read_from_either_backend():
    for backend in BACKENDS:
        assert sliding_window(tiny_model("gemma3", backend)) == 16
        assert sliding_window(tiny_model("gpt2", backend)) is None


def test_shared_prefix_len_leaves_a_token():
    assert shared_prefix_len([[1, 2, 3], [1, 2, 3]]) == 2
    assert shared_prefix_len([[1], [1, 2]]) == 0
    assert shared_prefix_len([]) == 0
