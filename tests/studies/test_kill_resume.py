"""`tl-truth run` killed (SIGKILL) at every stage, then resumed: nothing lost, same report.

A tiny random model saved as an HF directory runs the real CLI in subprocesses. The run is
killed in turn during generation, model extraction, capture, after the probe fit and during
p(True) (`TL_TRUTH_KILL_AT`), each re-run resuming what the last one left; the finished
report must equal an uninterrupted run's (timings and capture path aside; AUCs within 0.01, as
part of the resumed run's activations come from the two-pass capture), and the generations
byte for byte.
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


def _diff(a, b, path="", tol=0.01):
    """Where two JSON values differ, as (path, a, b); floats within `tol` are equal.

    The resumed run's activations come partly from the two-pass capture (the killed runs'
    batches were not all recorded inside generation), which differs from the fused capture
    by floating-point error: its AUCs may differ in the last digits (here they do not)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [(f"{path}.{k}", a.get(k), b.get(k)) for k in a.keys() ^ b.keys()]
        for k in a.keys() & b.keys():
            out += _diff(a[k], b[k], f"{path}.{k}", tol)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        pairs = enumerate(zip(a, b, strict=True))
        return [d for i, (x, y) in pairs for d in _diff(x, y, f"{path}[{i}]", tol)]
    if isinstance(a, float) and isinstance(b, float):
        return [] if abs(a - b) <= tol else [(path, a, b)]
    return [] if a == b else [(path, a, b)]


def test_killed_at_every_stage_resumes_to_the_uninterrupted_report(tiny_dir, tmp_path):
    ref = tmp_path / "reference"
    done = _run(tiny_dir, ref)
    assert done.returncode == 0, done.stderr[-3000:]

    out = tmp_path / "killed"
    left_behind = {
        # the first batch's shard, captured inside generation, survives the kill
        "generate:2": ["generate.ckpt.jsonl", "activations/fused_*.safetensors"],
        "extract:1": ["extract.ckpt.jsonl"],
        # answers generated before a kill were not recorded: the two-pass capture serves them
        "capture:1": ["activations/two_pass_*.safetensors"],
        "probe:1": ["activations/meta.json"],
        "p_true:1": ["p_true.ckpt.jsonl"],
    }
    for kill_at, evidence in left_behind.items():
        r = _run(tiny_dir, out, kill_at)
        assert r.returncode == -signal.SIGKILL, f"{kill_at}: not killed\n{r.stderr[-3000:]}"
        for pattern in evidence:
            assert list(out.glob(pattern)), f"{kill_at}: {pattern} missing"
        assert (out / LOCK_FILE).exists()  # left by the killed process: stale, taken over
    r = _run(tiny_dir, out)
    assert r.returncode == 0, r.stderr[-3000:]

    assert (out / "generations.jsonl").read_bytes() == (ref / "generations.jsonl").read_bytes()
    got, want = _report(out), _report(ref)
    # the uninterrupted run never ran an answer through the model twice
    assert want.pop("capture") == {
        "path": "fused", "fused_rows": 20, "two_pass_rows": 0, "two_pass_reasons": {}
    }  # fmt: skip
    resumed = got.pop("capture")
    assert resumed["path"] == "mixed" and resumed["two_pass_rows"] > 0
    assert resumed["fused_rows"] + resumed["two_pass_rows"] == 20
    assert _diff(got, want) == []
    assert not list(out.glob("*.ckpt.jsonl")) and not (out / LOCK_FILE).exists()
    assert sorted(p.name for p in (out / "activations").iterdir()) == sorted(
        [
            "meta.json",
            *(s["file"] for s in json.loads((out / "activations/meta.json").read_text())["shards"]),
        ]
    )
