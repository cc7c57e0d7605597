"""Data parallel: `tl-truth run --nproc 2` (2 processes x 1 thread) against one process with
2 threads, on the same CPU cores, measured in the same run.

Both runs are the real CLI on SmolLM2 and the same questions; the throughput is questions per
second of the run's generate + capture stages (`generate_s + capture_s` of report.json: rank
0's wall time, which includes waiting for the other rank). Model loading and rank 0's probe
grid are outside it. Also says whether the two runs gave the same generations (they may
differ where floating point does: one process with 2 threads may sum in another order than
two processes with one each; the 2-process run equals a 1-process 1-thread run by design).
`--with-1x1` adds that 1-process 1-thread run: on a machine other jobs load too, it tells the
cost of contention for 2 threads from the gain of 2 processes.

    .venv/bin/python benchmarks/bench_data_parallel.py --n 48
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(out: Path, n: int, tokens: int, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "tl_truth.cli", "run", "--model", "smollm2-135m-instruct",
           "--dataset", "capitals", "--limit", str(n), "--max-new-tokens", str(tokens),
           "--batch-size", "8", "--no-model-extract", "--no-p-true", "--layers", "15",
           "--positions", "last_prompt,exact_last", "--n-boot", "10", "--n-perm", "0",
           "--quiet", "--out", str(out), *extra]  # fmt: skip
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    timings = json.loads((out / "report.json").read_text())["timings"]
    return {**timings, "wall_s": time.perf_counter() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=48, help="questions")
    p.add_argument("--tokens", type=int, default=24, help="max new tokens")
    p.add_argument("--with-1x1", action="store_true", help="also 1 process x 1 thread")
    a = p.parse_args()
    runs = {
        "2x1": ["--nproc", "2", "--threads", "1"],
        "1x2": ["--threads", "2"],
        "1x1": ["--threads", "1"],  # the reference: what each rank of 2x1 does alone
    }
    if not a.with_1x1:
        del runs["1x1"]
    with tempfile.TemporaryDirectory() as d:
        t = {k: run(Path(d) / k, a.n, a.tokens, extra) for k, extra in runs.items()}
        lines = {k: (Path(d) / k / "generations.jsonl").read_text().splitlines() for k in runs}
    rate = {k: a.n / (v["generate_s"] + v["capture_s"]) for k, v in t.items()}
    same = {k: sum(x == y for x, y in zip(lines["2x1"], v, strict=True)) for k, v in lines.items()}
    print(
        "; ".join(
            f"{k}: generate {v['generate_s']} s + capture {v['capture_s']} s = "
            f"{rate[k]:.2f} q/s (whole command {v['wall_s']:.0f} s), generations equal to "
            f"2x1: {same[k]}/{a.n}"
            for k, v in t.items()
        )
        + f"; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print(
        f"data parallel: 2 proc x 1 thread = {rate['2x1']:.2f} q/s, 1 proc x 2 threads = "
        f"{rate['1x2']:.2f} q/s, ratio {rate['2x1'] / rate['1x2']:.2f}"
    )
    extra = f" dp_2x1_over_1x1={rate['2x1'] / rate['1x1']:.2f}" if "1x1" in rate else ""
    print(
        f"SUMMARY dp_2x1_over_1x2={rate['2x1'] / rate['1x2']:.2f}{extra} "
        f"dp_same_generations={same['1x2']}/{a.n}"
    )


if __name__ == "__main__":
    main()
