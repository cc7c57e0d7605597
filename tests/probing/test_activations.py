"""Capture equals an unbatched, unpadded reference; the store resumes and never corrupts."""

import json

import pytest
import torch

from tl_truth.answers.positions import NAMED_POSITIONS, resolve_positions
from tl_truth.probing.activations import ActivationStore, capture, capture_batch, default_hooks

pytestmark = pytest.mark.backend


def fake_records(n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    recs = []
    for i in range(n):
        p = int(torch.randint(3, 9, (1,), generator=g))
        a = int(torch.randint(0, 10, (1,), generator=g))
        prompt = [0] + torch.randint(5, 300, (p,), generator=g).tolist()
        answer = torch.randint(5, 300, (a,), generator=g).tolist()
        span = [len(prompt) + 1, len(prompt) + 3] if a >= 4 else None
        recs.append(
            {
                "id": str(i),
                "task": "t",
                "split": "train" if i % 3 else "test",
                "correct": bool(i % 2),
                "prompt_token_ids": prompt,
                "answer_token_ids": answer,
                "exact_answer_token_span": span,
            }
        )
    return recs


def reference(model, rec, hooks, positions):
    seq = torch.tensor([rec["prompt_token_ids"] + rec["answer_token_ids"]])
    _, cache = model.run_with_cache(seq, names_filter=lambda n: n in hooks)
    pos = resolve_positions(positions, [rec])[0]
    out = torch.zeros((len(hooks), len(positions), model.cfg.d_model))
    for j, h in enumerate(hooks):
        for k, p in enumerate(pos.tolist()):
            if p >= 0:
                out[j, k] = cache[h][0, p]
    return out


def test_batched_capture_equals_unbatched_reference(tiny):
    recs = fake_records()
    hooks = default_hooks(tiny) + ["blocks.0.hook_resid_pre", "blocks.1.hook_mlp_out"]
    pos = list(NAMED_POSITIONS)
    got = capture_batch(
        tiny,
        [r["prompt_token_ids"] + r["answer_token_ids"] for r in recs],
        resolve_positions(pos, recs),
        hooks,
    )
    for i, r in enumerate(recs):
        torch.testing.assert_close(got[i], reference(tiny, r, hooks, pos), atol=1e-4, rtol=1e-4)


def test_early_stop_does_not_change_shallow_hooks(tiny):
    recs = fake_records(3)
    pos = resolve_positions(["last_prompt"], recs)
    seqs = [r["prompt_token_ids"] + r["answer_token_ids"] for r in recs]
    shallow = capture_batch(tiny, seqs, pos, ["blocks.0.hook_resid_post"])
    full = capture_batch(tiny, seqs, pos, default_hooks(tiny))
    torch.testing.assert_close(shallow[:, 0], full[:, 0])


def test_store_round_trip_masks_and_metadata(tiny, tmp_path):
    recs = fake_records(9)
    store = capture(
        tiny, recs, tmp_path, shard_size=4, batch_size=3, dtype=torch.float32, progress=False
    )
    assert len(store.shard_files()) == 3 and store.is_complete()
    acts, valid = store.load()
    assert acts.shape == (9, tiny.cfg.n_layers, len(NAMED_POSITIONS), tiny.cfg.d_model)
    exact = store.positions.index("exact_first")
    assert valid[:, exact].tolist() == [r["exact_answer_token_span"] is not None for r in recs]
    assert (acts[~valid[:, exact], :, exact] == 0).all()
    assert store.labels.tolist() == [int(r["correct"]) for r in recs]
    assert store.meta["model"]["backend"] in ("bridge", "hooked")
    x, rows = store.cell(store.hooks[1], "exact_first")
    assert len(rows) == int(valid[:, exact].sum())
    ref = reference(tiny, recs[int(rows[0])], [store.hooks[1]], ["exact_first"])[0, 0]
    torch.testing.assert_close(x[0], ref, atol=1e-4, rtol=1e-4)
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("*.pkl"))


def test_resume_keeps_finished_shards_and_redoes_missing(tiny, tmp_path):
    recs = fake_records(8)
    capture(tiny, recs, tmp_path, shard_size=3, progress=False)
    files = sorted(tmp_path.glob("shard_*.safetensors"))
    before = {f.name: f.stat().st_mtime_ns for f in files}
    files[1].unlink()  # as if the run was killed before this shard was written
    (tmp_path / "shard_00001.safetensors.tmp").write_bytes(b"half-written")
    store = capture(tiny, recs, tmp_path, shard_size=3, progress=False)
    assert store.is_complete()
    after = {f.name: f.stat().st_mtime_ns for f in sorted(tmp_path.glob("shard_*.safetensors"))}
    assert after[files[0].name] == before[files[0].name]  # untouched
    assert after[files[2].name] == before[files[2].name]
    fresh = capture(tiny, recs, tmp_path / "fresh", shard_size=3, progress=False)
    torch.testing.assert_close(store.load()[0], fresh.load()[0])


def test_store_refuses_a_different_capture(tiny, tmp_path):
    recs = fake_records(4)
    capture(tiny, recs, tmp_path, progress=False)
    with pytest.raises(ValueError, match="different activation store"):
        capture(tiny, recs, tmp_path, positions=["last_prompt"], progress=False)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["positions"] == list(NAMED_POSITIONS)
    with pytest.raises(FileNotFoundError):
        ActivationStore.open(tmp_path / "nope")


def test_truncated_shard_meta_or_probe_errors_name_the_file(tiny, tmp_path):
    from tl_truth.probing import Probe

    store = capture(tiny, fake_records(5), tmp_path / "s", shard_size=4, progress=False)
    shard = store.shard_files()[0]
    shard.write_bytes(shard.read_bytes()[:100])  # a copy cut short
    with pytest.raises(ValueError, match=str(shard)):
        store.load()
    meta = tmp_path / "s" / "meta.json"
    meta.write_text(meta.read_text()[:50])
    with pytest.raises(ValueError, match=str(meta)):
        ActivationStore.open(tmp_path / "s")
    probe = Probe("mean_diff", torch.ones(2), 0.0, torch.zeros(2), torch.ones(2))
    probe.save(tmp_path / "p")
    st = tmp_path / "p.safetensors"
    st.write_bytes(st.read_bytes()[:40])
    with pytest.raises(ValueError, match=str(st)):
        Probe.load(tmp_path / "p")
