"""Capture inside generation against the two-pass capture: same tokens, float-error values.

Tolerance (measured on the tiny models of every architecture and backend, float32): the decode
loop's KV-cached, left-padded passes differ from the unpadded full forward by at most ~3e-6
absolute and ~1e-6 relative to the activation's norm (gemma3; gpt2 and llama ~1e-8 / 2e-7).
The tests allow 1e-4 absolute and 1e-5 relative.
"""

import json

import pytest
import torch

from tl_truth.answers.generation import GenerationConfig, generate_ids
from tl_truth.answers.positions import NAMED_POSITIONS
from tl_truth.answers.run import answer_questions
from tl_truth.answers.token_acts import TokenRecorder
from tl_truth.data import load_questions
from tl_truth.probing.activations import ActivationStore, capture, capture_batch
from tl_truth.probing.fused_capture import FusedCapture
from tl_truth.testing import BACKENDS, tiny_model

PROMPTS = [[0, 5, 9, 13], [0, 7], [0, 20, 21, 22, 23, 24, 25], [0, 3, 3, 3, 3], [0, 7]]
ABS, REL = 1e-4, 1e-5


def _hooks(model):
    return ["hook_embed", *(f"blocks.{i}.hook_resid_post" for i in range(model.cfg.n_layers))]


def _close(got, ref):
    """Max abs difference and max difference relative to each vector's norm."""
    diff = (got.float() - ref.float()).abs().max().item()
    norm = ref.float().norm(dim=-1).clamp_min(1e-6)
    rel = ((got.float() - ref.float()).norm(dim=-1) / norm).max().item()
    return diff <= ABS and rel <= REL, (diff, rel)


def _recorded(model, cfg, prompts=PROMPTS):
    rec = TokenRecorder(_hooks(model), torch.float32)
    got = {}

    def keep(rows, results, acts):
        for row, res, a in zip(rows, results, acts, strict=True):
            got[row] = (res, a)

    out = generate_ids(model, prompts, cfg, progress=False, record=rec, on_batch=keep)
    return out, got


@pytest.mark.backend
def test_decode_loop_records_the_two_pass_activations(tiny):
    """Every answer token and the last prompt token, K samples sharing a prompt pass, rows
    stopping early (stop token never fed) and rows running to max_new_tokens (an extra pass)."""
    _check_recorded(tiny, use_cache=True)


def test_decode_loop_without_cache_records_the_same():
    _check_recorded(tiny_model("gemma3", "bridge"), use_cache=False)


def _check_recorded(model, use_cache):
    tiny = model
    cfg = GenerationConfig(4, 1.0, 3, 4, use_cache=use_cache)
    plain = generate_ids(tiny, PROMPTS, cfg, progress=False)
    # a stop token the model really samples (same seed, same draws), so rows stop early
    stop = plain[2][0]["answer_token_ids"][3]
    cfg = GenerationConfig(7, 1.0, 3, 4, use_cache=use_cache, extra_stop_ids=(stop,))
    out, got = _recorded(tiny, cfg)
    assert len(got) == len(PROMPTS) * 3
    reasons = {res["stop_reason"] for res, _ in got.values()}
    assert {"eos", "max_tokens"} <= reasons, reasons
    keys = sorted(got)
    seqs = [PROMPTS[i] + got[i, k][0]["answer_token_ids"] for i, k in keys]
    positions = torch.full((len(keys), 8), -1)  # last prompt token + up to 7 answer tokens
    for row, ((i, _), seq) in enumerate(zip(keys, seqs, strict=True)):
        positions[row, : len(seq) - len(PROMPTS[i]) + 1] = torch.arange(
            len(PROMPTS[i]) - 1, len(seq)
        )
    ref = capture_batch(tiny, seqs, positions, _hooks(tiny))
    for row, (i, k) in enumerate(keys):
        res, acts = got[i, k]
        assert res == out[i][k]
        n = acts.shape[1]
        assert n == 1 + len(res["answer_token_ids"]) and bool((positions[row, n:] < 0).all())
        ok, err = _close(acts, ref[row, :, :n])
        assert ok, (i, k, err)


def test_recording_does_not_change_generation():
    model = tiny_model("llama")
    cfg = GenerationConfig(max_new_tokens=6, batch_size=2)
    out, _ = _recorded(model, cfg)
    assert out == generate_ids(model, PROMPTS, cfg, progress=False)


def test_recorder_refuses_a_hook_that_does_not_fire():
    rec = TokenRecorder(["blocks.0.hook_resid_post"])
    rec.begin()
    with pytest.raises(RuntimeError, match="two-pass capture"):
        rec.take([2])


def _store_close(fused, ref):
    a, va = fused.load()
    b, vb = ref.load()
    assert torch.equal(va, vb)
    assert fused.examples == ref.examples and fused.hooks == ref.hooks
    return _close(a, b)


@pytest.mark.backend
@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_store_equals_two_pass_store(tmp_path, backend):
    model = tiny_model("gpt2", backend)  # absolute positions: left padding must not shift them
    ds = load_questions("capitals", limit=10)
    fused = FusedCapture(model, tmp_path / "fused", _hooks(model), dtype=torch.float32)
    cfg = GenerationConfig(max_new_tokens=6, batch_size=4)
    run = answer_questions(model, ds, cfg, extract_with_model=False, progress=False, capture=fused)
    store = fused.finish(model, run.records, progress=False)
    assert store.meta["capture"] == {
        "path": "fused",
        "fused_rows": 10,
        "two_pass_rows": 0,
        "two_pass_reasons": {},
    }
    assert store.positions == list(NAMED_POSITIONS)
    ref = capture(model, run.records, tmp_path / "ref", _hooks(model), dtype=torch.float32,
                  progress=False)  # fmt: skip
    ok, err = _store_close(store, ref)
    assert ok, err
    # reopened from disk, it is the same store
    assert ActivationStore.open(tmp_path / "fused").meta == store.meta


def test_pending_extraction_and_fallbacks(tmp_path):
    """Answers awaiting the model's extraction are held, then gathered with their final spans;
    beyond the memory budget, or with a position inside the prompt, the two-pass capture
    serves them, counted with the reason."""
    model = tiny_model("llama")
    ds = load_questions("capitals", limit=6)
    cfg = GenerationConfig(max_new_tokens=4, batch_size=4)

    inside = {q.id for q in ds.questions[1:3]}

    def first_token(record):  # inside the prompt for two records: the loop did not keep it
        return 0 if record["id"] in inside else len(record["prompt_token_ids"])

    positions = ["last_prompt", "exact_first", "exact_last", "-1", first_token]
    stores = {}
    for budget in (1024, 0):
        d = tmp_path / f"budget{budget}"
        fused = FusedCapture(model, d, _hooks(model), positions, torch.float32, pending_mb=budget)
        run = answer_questions(model, ds, cfg, progress=False, capture=fused)
        stores[budget] = fused.finish(model, run.records, progress=False)
    attempted = run.summary["model_extraction"]["attempted"]
    assert attempted > 0  # random weights: string matching finds little
    held = stores[1024].meta["capture"]
    assert held["two_pass_reasons"] == {"inside_prompt": 2} and held["two_pass_rows"] == 2
    spilled = stores[0].meta["capture"]
    assert spilled["two_pass_reasons"]["over_pending_memory"] == attempted
    ref = capture(model, run.records, tmp_path / "ref", _hooks(model), positions,
                  dtype=torch.float32, progress=False)  # fmt: skip
    for store in stores.values():
        ok, err = _store_close(store, ref)
        assert ok, err


def test_finish_resumes_from_the_shards_left_behind(tmp_path):
    """A shard is kept only for the rows whose record is unchanged; a finished store is
    reused; a store of other records is refused."""
    model = tiny_model("llama")
    ds = load_questions("capitals", limit=6)
    cfg = GenerationConfig(max_new_tokens=5, batch_size=4)
    hooks = _hooks(model)
    fused = FusedCapture(model, tmp_path, hooks, dtype=torch.float32)
    run = answer_questions(model, ds, cfg, extract_with_model=False, progress=False, capture=fused)
    parts = sorted(p.name for p in tmp_path.glob("fused_*.safetensors"))
    assert len(parts) == 2 and not (tmp_path / "meta.json").exists()  # one per batch
    (tmp_path / "stray.safetensors.tmp").write_bytes(b"torn")

    # a new process: nothing recorded; one record's answer changed since its shard was written
    records = [dict(r.to_dict()) for r in run.records]
    records[1]["answer_token_ids"] = records[1]["answer_token_ids"][:-1]
    records[1]["exact_answer_token_span"] = None
    store = FusedCapture(model, tmp_path, hooks, dtype=torch.float32).finish(
        model, records, progress=False
    )
    c = store.meta["capture"]
    assert (c["path"], c["fused_rows"], c["two_pass_rows"]) == ("mixed", 5, 1)
    assert c["two_pass_reasons"] == {"not_recorded": 1}
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == sorted(["meta.json", *(s["file"] for s in store.meta["shards"])])
    ref = capture(model, records, tmp_path / "ref", hooks, dtype=torch.float32, progress=False)
    ok, err = _store_close(store, ref)
    assert ok, err

    again = FusedCapture(model, tmp_path, hooks, dtype=torch.float32)
    assert again.finish(model, records, progress=False).meta == store.meta  # reused as is
    records[0]["correct"] = not records[0]["correct"]
    with pytest.raises(ValueError, match="different activation store.*examples"):
        again.finish(model, records, progress=False)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta == store.meta


def test_a_store_of_other_settings_is_refused_before_generating(tmp_path):
    model = tiny_model("llama")
    records = [{"id": "q", "task": "t", "split": "train", "correct": True,
                "prompt_token_ids": [1, 20, 30], "answer_token_ids": [50]}]  # fmt: skip
    capture(model, records, tmp_path, ["blocks.0.hook_resid_post"], progress=False)
    with pytest.raises(ValueError, match="different activation store.*hooks"):
        FusedCapture(model, tmp_path, ["blocks.1.hook_resid_post"])
    # same settings: left untouched while generating, reused when the records match
    fused = FusedCapture(model, tmp_path, ["blocks.0.hook_resid_post"])
    assert fused.finished
    fused.add([0], records, [torch.zeros(1, 2, 32)], [True])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json", "shard_00000.safetensors"]
    assert fused.finish(model, records, progress=False).meta == ActivationStore.open(tmp_path).meta
