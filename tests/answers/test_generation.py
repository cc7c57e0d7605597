"""Our decoding loop against plain HF greedy decoding, with and without cache, both backends."""

import json

import pytest
import torch

from tl_truth.answers.generation import GenerationConfig, decode_state, generate_ids
from tl_truth.answers.prefix_cache import shared_prefix_len
from tl_truth.models import backend_of
from tl_truth.testing import BACKENDS, tiny_model

pytestmark = pytest.mark.backend

PROMPTS = [[0, 5, 9, 13], [0, 7], [0, 20, 21, 22, 23, 24, 25], [0, 3, 3, 3, 3]]


def hf_greedy(hf, prompt, n, stops):
    ids = torch.tensor([prompt])
    out = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(hf(ids).logits[0, -1].argmax())
            if nxt in stops:
                break
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
    return out


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "nocache"])
def test_greedy_matches_hf_left_padded_batch(tiny, use_cache):
    from tiny import tiny_hf

    hf, tok = tiny_hf(tiny._tl_truth_name.removeprefix("tiny-"))
    cfg = GenerationConfig(max_new_tokens=12, batch_size=4, use_cache=use_cache)
    got = generate_ids(tiny, PROMPTS, cfg, progress=False)
    for prompt, samples in zip(PROMPTS, got, strict=False):
        ref = hf_greedy(hf, prompt, 12, {tok.eos_token_id})
        assert samples[0]["answer_token_ids"] == ref
        assert len(samples[0]["token_logprobs"]) == len(ref)
        assert all(lp <= 0 for lp in samples[0]["token_logprobs"])


def test_logprobs_match_forward(tiny):
    cfg = GenerationConfig(max_new_tokens=6, batch_size=4)
    got = generate_ids(tiny, PROMPTS, cfg, progress=False)
    for prompt, samples in zip(PROMPTS, got, strict=False):
        ans = samples[0]["answer_token_ids"]
        if not ans:
            continue
        with torch.no_grad():
            logits = tiny(torch.tensor([prompt + ans]))[0].float()
        logp = torch.log_softmax(logits, -1)
        ref = [float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(ans)]
        assert samples[0]["token_logprobs"] == pytest.approx(ref, abs=1e-4)


def test_sampling_is_seeded_and_k_rows(tiny):
    cfg = GenerationConfig(max_new_tokens=5, temperature=1.0, num_samples=3, seed=7)
    a = generate_ids(tiny, PROMPTS[:2], cfg, progress=False)
    b = generate_ids(tiny, PROMPTS[:2], cfg, progress=False)
    assert [len(x) for x in a] == [3, 3]
    assert a == b
    c = generate_ids(tiny, PROMPTS[:2], GenerationConfig(5, 1.0, 3, seed=8), progress=False)
    assert a != c


def test_sampling_needs_temperature(tiny):
    with pytest.raises(ValueError, match="temperature"):
        generate_ids(tiny, PROMPTS, GenerationConfig(num_samples=2), progress=False)


def test_decode_state_gives_absolute_positions(tiny):
    """A hook sees the same absolute positions with and without the cache."""
    seen = {True: [], False: []}

    def record(use_cache):
        def hook(act, hook):
            st = decode_state()
            seen[use_cache].append(st.absolute_positions(act.shape[1])[:, -1].tolist())
            return act

        return hook

    for use_cache in (True, False):
        with tiny.hooks(fwd_hooks=[("blocks.0.hook_resid_post", record(use_cache))]):
            generate_ids(
                tiny,
                PROMPTS,
                GenerationConfig(4, batch_size=4, use_cache=use_cache),
                progress=False,
            )
    assert seen[True] == seen[False]
    # the prompt pass ends at each row's last prompt token, whatever its padding
    first = seen[True][0]
    lengths = sorted(len(p) for p in PROMPTS)
    assert first == [n - 1 for n in lengths]


def test_backend_detection(tiny):
    assert backend_of(tiny) in ("bridge", "hooked")
    with pytest.raises(TypeError, match="HookedTransformer or TransformerBridge"):
        backend_of(torch.nn.Linear(2, 2))


def test_shared_prompt_pass_for_k_samples(tiny):
    """K samples share one prompt pass (the cache is repeated row-wise): same samples as
    without the cache, and every sample's log-probabilities match a plain forward."""
    kw = dict(max_new_tokens=6, temperature=1.0, num_samples=4, seed=3, batch_size=6)
    # batch_size 6 < 3 x 4 rows: a question's samples straddle two batches
    shared = generate_ids(tiny, PROMPTS[:3], GenerationConfig(**kw), progress=False)
    plain = generate_ids(tiny, PROMPTS[:3], GenerationConfig(**kw, use_cache=False), progress=False)
    assert [[s["answer_token_ids"] for s in q] for q in shared] == [
        [s["answer_token_ids"] for s in q] for q in plain
    ]
    assert len({tuple(s["answer_token_ids"]) for q in shared for s in q}) > 3  # they do differ
    for prompt, samples in zip(PROMPTS, shared, strict=False):
        for s in samples:
            ans = s["answer_token_ids"]
            if not ans:
                continue
            with torch.no_grad():
                logp = torch.log_softmax(tiny(torch.tensor([prompt + ans]))[0].float(), -1)
            ref = [float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(ans)]
            assert s["token_logprobs"] == pytest.approx(ref, abs=1e-4)


def test_shared_prompts_groups_consecutive_rows():
    from tl_truth.answers.generation import _shared_prompts

    unique, index = _shared_prompts([[1, 2], [1, 2], [3], [1, 2]])
    assert unique == [[1, 2], [3], [1, 2]] and index.tolist() == [0, 0, 1, 2]


def test_same_generation_settings_ignores_speed_only_switches():
    from tl_truth.answers.generation import same_generation_settings

    cfg = GenerationConfig(max_new_tokens=5, temperature=1.0, num_samples=3)
    saved = json.loads(json.dumps(vars(cfg)))
    assert same_generation_settings(saved, cfg)
    older = {k: v for k, v in saved.items() if k != "share_prompt_pass"}  # before the switch
    assert same_generation_settings(older, cfg)
    assert same_generation_settings(saved, GenerationConfig(5, 1.0, 3, share_prompt_pass=False))
    assert not same_generation_settings(saved, GenerationConfig(5, 1.0, 4))
    assert not same_generation_settings(None, cfg)


@pytest.mark.parametrize("temperature,k", [(0.0, 1), (1.0, 2)])
def test_checkpointed_generation_resumes_identically(tmp_path, monkeypatch, temperature, k):
    """A run killed after some batches resumes from its checkpoint with identical results
    (sampled runs too: the sampler's state is saved per batch) and decodes only the rest."""
    from tl_truth.answers import generation as g

    model = tiny_model("llama", BACKENDS[0])
    ids = [
        model.tokenizer(f"Q: {w} is?\nA:").input_ids for w in ("Paris", "Rome x", "a b c d", "Oslo")
    ]
    cfg = g.GenerationConfig(
        max_new_tokens=4, temperature=temperature, num_samples=k, batch_size=2, seed=3
    )
    reference = g.generate_ids(model, ids, cfg, progress=False)
    ck = tmp_path / "gen.ckpt.jsonl"
    g.generate_ids(model, ids, cfg, progress=False, checkpoint=ck)
    lines = ck.read_text().splitlines()
    n_batches = len(lines) - 1
    assert n_batches == (len(ids) * k + 1) // 2
    ck.write_text("\n".join(lines[:2]) + "\n" + lines[2][:25])  # killed mid-write of batch 2
    calls = []
    real = g._decode_batch
    monkeypatch.setattr(g, "_decode_batch", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    resumed = g.generate_ids(model, ids, cfg, progress=False, checkpoint=ck)
    assert resumed == reference
    assert len(calls) == n_batches - 1  # batch 0 came from the checkpoint


def test_checkpoint_of_other_settings_is_refused(tmp_path):
    from tl_truth.answers import generation as g

    model = tiny_model("llama", BACKENDS[0])
    ids = [model.tokenizer("Q: x?\nA:").input_ids]
    ck = tmp_path / "gen.ckpt.jsonl"
    g.generate_ids(model, ids, g.GenerationConfig(max_new_tokens=2), progress=False, checkpoint=ck)
    with pytest.raises(ValueError, match="gen.ckpt.jsonl"):
        g.generate_ids(
            model, ids, g.GenerationConfig(max_new_tokens=3), progress=False, checkpoint=ck
        )


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
def test_shared_prefix_decoding_equals_plain_decoding(arch):
    """A 40-token prefix common to every prompt runs once; each batch left-pads its suffixes after
    it (gemma3's small local window: equal-length batches instead). Same tokens as the plain
    padded loop, log-probabilities within float tolerance."""
    from tl_truth.answers import generation as g

    for backend in BACKENDS:
        model = tiny_model(arch, backend)
        prefix = [0] + [5, 9, 13, 7] * 10
        suffixes = [[20, 21], [22], [20, 23], [30, 31, 32, 33], [24], [25, 26]]
        prompts = [prefix + s for s in suffixes]
        assert shared_prefix_len(prompts) == len(prefix)
        cfg = g.GenerationConfig(max_new_tokens=6, batch_size=4)
        plain = g.generate_ids(model, prompts, cfg, progress=False)
        sizes = []
        shared = g.generate_ids(
            model,
            prompts,
            cfg,
            progress=False,
            share_prefix=True,
            on_batch=lambda rows, res, acts, sizes=sizes: sizes.append(len(rows)),
        )
        # Padded batches, except where padding could reach gemma3's 16-token local window.
        assert sizes == ([2, 3, 1] if arch == "gemma3" else [4, 2]), (arch, backend)
        for a, b in zip(plain, shared, strict=True):
            assert a[0]["answer_token_ids"] == b[0]["answer_token_ids"], (arch, backend)
            torch.testing.assert_close(
                torch.tensor(a[0]["token_logprobs"]),
                torch.tensor(b[0]["token_logprobs"]),
                atol=1e-4,
                rtol=1e-4,
            )


@pytest.mark.parametrize(
    "share_prefix, use_cache",
    [(False, True), (True, True), (False, False)],
    ids=["plain", "shared_prefix", "no_cache"],
)
def test_dropping_finished_rows_keeps_every_answer(tiny, share_prefix, use_cache):
    """Rows that stop leave the batch (and its cache, or the no-cache path's sequence so far):
    the same tokens as decoding them to the end with padding, log-probabilities within float
    tolerance, and fewer rows decoded."""
    prefix = [0] + [5, 9, 13, 7] * 10 if share_prefix else [0]
    prompts = [prefix + p[1:] + [k + 3] for k, p in enumerate(PROMPTS * 2)]
    free = generate_ids(tiny, prompts, GenerationConfig(max_new_tokens=10), progress=False)
    seqs = [a[0]["answer_token_ids"] for a in free]
    # tokens the rows generate at different steps become stop tokens: rows stop at different steps
    stops = tuple({s[min(len(s) - 1, 1 + i % 7)] for i, s in enumerate(seqs) if s})
    cfg = GenerationConfig(max_new_tokens=10, batch_size=8, extra_stop_ids=stops,
                           use_cache=use_cache)  # fmt: skip
    fed: list[int] = []

    def count_rows(module, args, output):
        fed.append(output.shape[0])

    full = generate_ids(tiny, prompts, cfg, progress=False, share_prefix=share_prefix)
    handle = tiny.embed.register_forward_hook(count_rows)
    try:
        dropped = generate_ids(tiny, prompts, cfg, progress=False, share_prefix=share_prefix,
                               drop_finished=True)  # fmt: skip
    finally:
        handle.remove()
    lengths = [len(a[0]["answer_token_ids"]) for a in full]
    assert len(set(lengths)) > 1, lengths  # the test needs rows that stop at different steps
    for a, b in zip(full, dropped, strict=True):
        assert a[0]["answer_token_ids"] == b[0]["answer_token_ids"]
        assert a[0]["stop_reason"] == b[0]["stop_reason"]
        torch.testing.assert_close(torch.tensor(a[0]["token_logprobs"]),
                                   torch.tensor(b[0]["token_logprobs"]), atol=1e-4, rtol=1e-4)  # fmt: skip
    assert min(fed) < len(prompts)  # rows did leave the batch


def test_dropping_finished_rows_refuses_sampling_and_recording(tiny):
    from tl_truth.answers.token_acts import TokenRecorder

    sampled = GenerationConfig(max_new_tokens=3, temperature=1.0)
    with pytest.raises(ValueError, match="greedy"):
        generate_ids(tiny, PROMPTS, sampled, progress=False, drop_finished=True)
    rec = TokenRecorder(["blocks.0.hook_resid_post"])
    with pytest.raises(ValueError, match="recorder"):
        generate_ids(tiny, PROMPTS, GenerationConfig(max_new_tokens=3), progress=False,
                     drop_finished=True, record=rec)  # fmt: skip
