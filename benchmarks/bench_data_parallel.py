"""Data parallel: `tl-truth run --nproc 2` (2 processes x 1 thread) against one process with
2 threads, on the same CPU cores, measured in the same run.

Both runs are the real CLI on SmolLM2 and the same questions; the throughput is questions per
second of the run's generate + capture stages (`generate_s + capture_s` of report.json: rank
0's wall time, which includes waiting for the other rank). Model loading and rank 0's probe
grid are outside it. Also says whether the two runs gave the same generations (they may
differ where floating point does: one process with 2 threads may sum in another order than
two processes with one each; the 2-process run equals a 1-process 1-thread run by design).

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
    cmd = [sys.executable, "-m", "tl_truth.cli", "run", "--model", "smollm2-135m",
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
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        two = run(Path(d) / "two", a.n, a.tokens, ["--nproc", "2", "--threads", "1"])
        one = run(Path(d) / "one", a.n, a.tokens, ["--threads", "2"])
        lines = [
            (Path(d) / k / "generations.jsonl").read_text().splitlines() for k in ("two", "one")
        ]
    rate = {k: a.n / (t["generate_s"] + t["capture_s"]) for k, t in (("two", two), ("one", one))}
    same = sum(x == y for x, y in zip(*lines, strict=True))
    print(
        f"stages (s): 2x1 generate {two['generate_s']} capture {two['capture_s']} "
        f"(whole command {two['wall_s']:.0f}); 1x2 generate {one['generate_s']} capture "
        f"{one['capture_s']} (whole command {one['wall_s']:.0f}); "
        f"identical generations: {same}/{len(lines[0])}; load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"data parallel: 2 proc x 1 thread = {rate['two']:.2f} q/s, 1 proc x 2 threads = "
        f"{rate['one']:.2f} q/s, ratio {rate['two'] / rate['one']:.2f}"
    )


if __name__ == "__main__":
    main()
