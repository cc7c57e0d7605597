"""Data-parallel runs (`tl_truth.parallel`): sharded checkpoints, capture and the run lock with
ranks as threads, and `tl-truth run --nproc 2` (torchrun, gloo) against one process.

The end-to-end tests run a tiny random model saved as an HF directory. A random model answers
nothing right, so the dataset is made from its own answers: the gold of every other question
is a word the model does say, giving both labels and a probe grid with real AUCs.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import tl_truth as tt
from tl_truth.answers.generation import GenerationConfig, generate_ids
from tl_truth.checkpoint import LOCK_FILE, JsonlCheckpoint, RunLock, RunLockedError
from tl_truth.cli import main
from tl_truth.models import from_hf
from tl_truth.parallel import SINGLE, rank_file, rank_files, sharded
from tl_truth.probing.activations import capture
from tl_truth.testing import thread_ranks, tiny_hf


def _on_ranks(world, fn):
    """fn(ranks) on `world` thread ranks, each inside `sharded`; every rank's result."""

    def one(r):
        with sharded(r):
            return fn(r)

    with ThreadPoolExecutor(world) as pool:
        return list(pool.map(one, thread_ranks(world)))


@pytest.fixture(scope="module")
def models():
    """Two tiny llamas with the same weights: ranks as threads must not share hooks."""
    return [
        from_hf(*tiny_hf("llama"), backend="bridge", name="tiny-llama", device="cpu", chat=False)
        for _ in range(2)
    ]


# ---------------------------------------------------------------------------------------------
# Checkpoints, lock and capture, with ranks as threads


def test_sharded_checkpoint_splits_the_batches_and_every_rank_gets_them_all(tmp_path):
    path = tmp_path / "x.ckpt.jsonl"
    computed = []

    def work(r):
        ck = JsonlCheckpoint(path, key="k")
        for b in ck.pending(5):
            ck.get_or_compute(b, lambda b=b: computed.append((r.rank, b)) or [b * 10])
        return ck.gather(5)

    assert _on_ranks(2, work) == [[[0], [10], [20], [30], [40]]] * 2
    assert sorted(computed) == [(0, 0), (0, 2), (0, 4), (1, 1), (1, 3)]
    assert rank_files(path) == [rank_file(path, 0), rank_file(path, 1)]
    assert not path.exists()  # a single process's file is not written by ranks
    # one process reads back what the ranks wrote: nothing left to do
    assert JsonlCheckpoint(path, key="k").pending(5) == []


def test_killed_ranks_resume_with_another_number_of_processes(tmp_path):
    path = tmp_path / "x.ckpt.jsonl"
    JsonlCheckpoint(path, key="k").append(0, ["a"])  # a single process got this far
    for rank, batches in ((0, [2]), (1, [1]), (2, [])):  # a 3-process run, then killed
        with sharded(thread_ranks(3)[rank]):
            ck = JsonlCheckpoint(path, key="k")
            for b in batches:
                ck.append(b, [f"{b}"])
    with open(rank_file(path, 1), "a") as f:
        f.write('{"batch": 3, "items": ["torn')  # rank 1 killed mid-line
    seen = {}

    def work(r):
        ck = JsonlCheckpoint(path, key="k")
        seen[r.rank] = ck.pending(6)
        for b in seen[r.rank]:
            ck.append(b, [f"{b}"])
        return ck.gather(6)

    assert _on_ranks(2, work) == [[["a"], ["1"], ["2"], ["3"], ["4"], ["5"]]] * 2
    assert seen == {0: [3, 5], 1: [4]}  # the unfinished batches, dealt round-robin again
    assert json.loads(rank_file(path, 1).read_text().splitlines()[-1])["batch"] == 4


def test_lock_taken_by_rank_0_and_refused_on_every_rank(tmp_path):
    def take(r):
        with RunLock(tmp_path, r):
            held = (tmp_path / LOCK_FILE).exists()
            r.barrier()  # rank 0 releases it only after every rank has looked
            return held

    assert _on_ranks(2, take) == [True, True]
    assert not (tmp_path / LOCK_FILE).exists()
    holder = {"pid": 1, "host": socket.gethostname(), "started": "now", "command": "other"}
    (tmp_path / LOCK_FILE).write_text(json.dumps(holder))  # a live process holds it

    def refused(r):
        with pytest.raises(RunLockedError, match="pid 1"):
            RunLock(tmp_path, r).__enter__()
        return True

    assert _on_ranks(2, refused) == [True, True]


@pytest.mark.backend
def test_sharded_capture_writes_the_store_one_process_writes(tmp_path, models):
    records = [
        {"id": str(i), "task": "t", "split": "train" if i % 3 else "test", "correct": i % 2 == 0,
         "prompt_token_ids": [1, 20 + i, 30], "answer_token_ids": [50 + i, 60, 70][: 1 + i % 3]}
        for i in range(10)
    ]  # fmt: skip
    positions = ["last_prompt", "first_answer", "last_generated"]
    capture(models[0], records, tmp_path / "one", positions=positions, shard_size=3,
            progress=False)  # fmt: skip
    _on_ranks(
        2,
        lambda r: capture(models[r.rank], records, tmp_path / "two", positions=positions,
                          shard_size=3, progress=False),
    )  # fmt: skip
    one = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert one == sorted(p.name for p in (tmp_path / "two").iterdir())
    assert len(one) == 5  # meta.json and 4 shards, 2 written by each rank
    for name in one:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


@pytest.mark.backend
def test_sharded_generation_equals_one_process_and_refuses_sampling(models):
    tok = models[0].tokenizer
    prompts = [tok(f"Q: What is {i} + {i}?\nA:").input_ids for i in range(9)]
    cfg = GenerationConfig(max_new_tokens=4, batch_size=2)
    one = generate_ids(models[0], prompts, cfg, progress=False)
    both = _on_ranks(2, lambda r: generate_ids(models[r.rank], prompts, cfg, progress=False))
    assert both == [one, one]
    sampled = GenerationConfig(max_new_tokens=2, temperature=1.0)

    def refused(r):
        with pytest.raises(ValueError, match="greedy only"):
            generate_ids(models[r.rank], prompts, sampled, progress=False)
        return True

    assert _on_ranks(2, refused) == [True, True]


def test_only_run_is_data_parallel_and_imports_start_nothing(monkeypatch, tmp_path, capsys):
    import torch.distributed as dist

    assert not dist.is_initialized()  # importing tl_truth (and its CLI) joined no group
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["generate", "--out", str(tmp_path)]) == 2
    assert "only `tl-truth run` is data parallel" in capsys.readouterr().err
    assert not dist.is_initialized()


# ---------------------------------------------------------------------------------------------
# `tl-truth run --nproc 2`: two processes under torchrun (gloo) against one

ARGS = ["run", "--limit", "48", "--max-new-tokens", "6", "--batch-size", "4", "--n-boot", "20",
        "--n-perm", "4", "--layers", "all", "--quiet", "--threads", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny model directory, a dataset half of whose golds it says, and one process's run."""
    d = tmp_path_factory.mktemp("parallel")
    hf, tok = tiny_hf("llama")
    hf.save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        model = tt.load_model(str(d / "model"), device="cpu")
        questions = tt.load_questions("capitals", 48)
        run = tt.answer_questions(model, questions, GenerationConfig(max_new_tokens=6, batch_size=4),
                                  tt.parse_format("auto", model), extract_with_model=False,
                                  progress=False)  # fmt: skip
        rows = []
        for i, (q, r) in enumerate(zip(questions.questions, run.records, strict=True)):
            said = re.findall(r"[A-Za-z]{3,}", r["answer"])
            gold = said[0] if said and i % 2 == 0 else "Zanzibar"
            rows.append({"id": q.id, "task": "capitals", "question": q.question, "answer": gold})
        data = d / "questions.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        args = [*ARGS, "--model", str(d / "model"), "--dataset", str(data)]
        assert main([*args, "--out", str(d / "one")]) == 0  # the reference, in this process
    finally:
        torch.set_num_threads(threads)
    return d, args


def _report(out):
    report = json.loads((out / "report.json").read_text())
    report.pop("timings")
    report.pop("capture")  # which capture path served the rows (fused vs two-pass): not a result
    return report


def _nproc(args, out, kill_at=None):
    env = {k: v for k, v in os.environ.items() if k not in ("TL_TRUTH_KILL_AT", "WORLD_SIZE")}
    if kill_at:
        env["TL_TRUTH_KILL_AT"] = kill_at
    cmd = [sys.executable, "-m", "tl_truth.cli", *args, "--out", str(out), "--nproc", "2"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_two_processes_give_the_generations_and_report_of_one(tiny_run):
    d, args = tiny_run
    one = _report(d / "one")
    labels = {r["correct"] for r in map(json.loads, (d / "one/generations.jsonl").open())}
    assert labels == {True, False}  # both classes: the grid has real AUCs to compare
    assert sum(a is not None for row in one["auc"] for a in row) >= 4

    r = _nproc(args, d / "two")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("## tl_truth report") == 1  # rank 0 alone prints it
    two = d / "two"
    assert (two / "generations.jsonl").read_bytes() == (d / "one/generations.jsonl").read_bytes()
    assert _report(two) == one  # every AUC, CI, baseline and control: exactly equal
    capture = json.loads((two / "report.json").read_text())["capture"]
    assert capture["two_pass_reasons"] == {"data_parallel": capture["two_pass_rows"]}
    assert not list(two.glob("*.ckpt.jsonl")) and not (two / LOCK_FILE).exists()


def test_a_killed_rank_leaves_a_run_that_resumes(tiny_run):
    d, args = tiny_run
    out = d / "killed"
    r = _nproc(args, out, kill_at="generate:3@1")  # rank 1 dies after 3 batches
    assert r.returncode != 0
    left = {p.name: len(p.read_text().splitlines()) - 1 for p in out.glob("generate*.ckpt.jsonl")}
    assert left.get("generate.rank1.ckpt.jsonl") == 3, left  # its finished batches, kept
    assert not (out / "generations.jsonl").exists()
    threads = torch.get_num_threads()
    try:  # resumed by one process: the checkpoints of both ranks are read back
        assert main([*args, "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    assert (out / "generations.jsonl").read_bytes() == (d / "one/generations.jsonl").read_bytes()
    assert _report(out) == _report(d / "one")
    assert not list(out.glob("*.ckpt.jsonl"))


def test_torchrun_worker_entry_is_single_without_torchrun():
    from tl_truth import parallel

    assert parallel.start() is SINGLE and not parallel.under_torchrun({})
    assert not __import__("torch.distributed").distributed.is_initialized()
