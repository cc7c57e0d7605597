"""`tl-truth run` killed (SIGKILL) at every stage, then resumed: nothing lost, same report.

A tiny random model saved as an HF directory runs the real CLI in subprocesses. The run is
killed in turn during generation, model extraction, capture, after the probe fit and during
p(True) (`TL_TRUTH_KILL_AT`), each re-run resuming what the last one left; the finished
report must equal an uninterrupted run's (timings aside), and the generations byte for byte.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tl_truth.checkpoint import LOCK_FILE
from tl_truth.testing import tiny_hf

ARGS = [
    "run",
    "--dataset",
    "capitals",
    "--limit",
    "20",
    "--max-new-tokens",
    "6",
    "--batch-size",
    "4",
    "--n-boot",
    "20",
    "--n-perm",
    "4",
    "--quiet",
    "--threads",
    "1",
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-llama")
    hf, tok = tiny_hf("llama")
    hf.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _run(model_dir, out, kill_at=None):
    env = {k: v for k, v in os.environ.items() if k != "TL_TRUTH_KILL_AT"}
    if kill_at:
        env["TL_TRUTH_KILL_AT"] = kill_at
    return subprocess.run(
        [sys.executable, "-m", "tl_truth.cli", *ARGS, "--model", str(model_dir), "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _report(out):
    d = json.loads((out / "report.json").read_text())
    d.pop("timings", None)
    return d


def test_killed_at_every_stage_resumes_to_the_uninterrupted_report(tiny_dir, tmp_path):
    ref = tmp_path / "reference"
    done = _run(tiny_dir, ref)
    assert done.returncode == 0, done.stderr[-3000:]

    out = tmp_path / "killed"
    left_behind = {
        "generate:2": "generate.ckpt.jsonl",
        "extract:1": "extract.ckpt.jsonl",
        "capture:1": "activations/shard_00000.safetensors",
        "probe:1": "activations/shard_00000.safetensors",
        "p_true:1": "p_true.ckpt.jsonl",
    }
    for kill_at, evidence in left_behind.items():
        r = _run(tiny_dir, out, kill_at)
        assert r.returncode == -signal.SIGKILL, f"{kill_at}: not killed\n{r.stderr[-3000:]}"
        assert (out / evidence).exists(), f"{kill_at}: {evidence} missing"
        assert (out / LOCK_FILE).exists()  # left by the killed process: stale, taken over
    r = _run(tiny_dir, out)
    assert r.returncode == 0, r.stderr[-3000:]

    assert (out / "generations.jsonl").read_bytes() == (ref / "generations.jsonl").read_bytes()
    assert _report(out) == _report(ref)
    assert not list(out.glob("*.ckpt.jsonl")) and not (out / LOCK_FILE).exists()
