"""`make bench`: every benchmark in one run, then one table of the numbers the issues set goals for.

Each `bench_*.py` prints its own report and ends with a `SUMMARY key=value ...` line; this runs
them one after another (one heavy job at a time: they time themselves), keeps their full output
in `runs/bench/<name>.txt`, and prints the summary table, also written to
`runs/bench/summary.json`. Every number is a ratio (or seconds per answer) measured inside one
benchmark run, against a baseline measured in the same run.

    .venv/bin/python benchmarks/run_benchmarks.py            # all
    .venv/bin/python benchmarks/run_benchmarks.py extraction  # some
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = Path("runs/bench")

# name -> (script arguments, the goals: SUMMARY key -> (goal text, met(value)))
BENCHES: dict[str, tuple[list[str], dict]] = {
    "pipeline": (
        [],
        {
            "pipeline_over_generation": ("<= 1.5", lambda v: v <= 1.5),
            "two_pass_pipeline_over_generation": ("(before; composed from measured parts)", None),
            "capture_overhead_in_generation": ("(fraction of generation)", None),
            "two_pass_capture_over_generation": ("(the second pass it replaces)", None),
        },
    ),
    "extraction": (
        ["--n", "64", "--dataset", "capitals,city_country"],
        {
            "extraction_s_per_answer": ("<= 0.2", lambda v: v <= 0.2),
            "p_true_s_per_answer": ("<= 0.2", lambda v: v <= 0.2),
        },
    ),
    "probe_grid": (
        [],
        {
            "grid_speedup": (">= 10", lambda v: v >= 10),
            "grid_max_abs_dauc": ("<= 0.01 (every cell)", lambda v: v <= 0.01),
            "grid_max_abs_dauc_same_c": (
                "<= 0.01 (cells where sklearn picks our C)",
                lambda v: v <= 0.01,
            ),  # fmt: skip
        },
    ),
    "generation": (
        [],
        {
            "decode_vs_hf_generate": ("<= 1.05", lambda v: v <= 1.05),
            "same_tokens_as_hf": ("1", lambda v: v == 1),
        },
    ),
    "data_parallel": (
        ["--with-1x1"],
        {
            "dp_2x1_over_1x2": ("(2 proc x 1 thread / 1 proc x 2 threads)", None),
            "dp_2x1_over_1x1": ("(2 proc x 1 thread / 1 proc x 1 thread)", None),
        },
    ),
}


def parse_summary(text: str) -> dict[str, float | str]:
    """The `key=value` pairs of the last `SUMMARY` line (numbers where they parse).

    >>> parse_summary("noise\\nSUMMARY a=1.5 b=3/4\\n")
    {'a': 1.5, 'b': '3/4'}
    """
    lines = [x for x in text.splitlines() if x.startswith("SUMMARY ")]
    out: dict[str, float | str] = {}
    for pair in lines[-1].split()[1:] if lines else []:
        key, _, value = pair.partition("=")
        try:
            out[key] = float(value)
        except ValueError:
            out[key] = value
    return out


def main(names: list[str]) -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    unknown = set(names) - set(BENCHES)
    if unknown:
        print(f"unknown benchmark(s) {sorted(unknown)}; choose from {list(BENCHES)}")
        return 2
    results: dict[str, dict] = {}
    failed = []
    for name in names or list(BENCHES):
        args, _ = BENCHES[name]
        cmd = [sys.executable, str(HERE / f"bench_{name}.py"), *args]
        print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        text = done.stdout + (f"\n[stderr]\n{done.stderr[-4000:]}" if done.returncode else "")
        (OUT / f"{name}.txt").write_text(text)
        print(done.stdout, end="", flush=True)
        if done.returncode:
            failed.append(name)
            print(f"{name} FAILED (exit {done.returncode}): {done.stderr[-2000:]}")
        results[name] = {"summary": parse_summary(done.stdout),
                         "wall_s": round(time.perf_counter() - t0, 1)}  # fmt: skip

    rows = []
    for name, res in results.items():
        goals = BENCHES[name][1]
        for key, value in res["summary"].items():
            goal, met = goals.get(key, ("", None))
            verdict = ""
            if met is not None and not isinstance(value, str):
                verdict = "met" if met(value) else "NOT met"
            rows.append((name, key, value, goal, verdict))
    machine = platform.processor() or platform.machine()
    load = os.getloadavg()[0]
    print(f"\n=== summary (machine: {machine}, {os.cpu_count()} cores, load average {load:.1f})")
    width = max((len(r[1]) for r in rows), default=10)
    for name, key, value, goal, verdict in rows:
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"  {name:<14}{key:<{width + 2}}{shown:>10}   {goal:<44}{verdict}")
    doc = {"results": results, "load_average": os.getloadavg()[0], "cores": os.cpu_count(),
           "failed": failed}  # fmt: skip
    (OUT / "summary.json").write_text(json.dumps(doc, indent=2))
    print(f"full outputs: {OUT}/<name>.txt; table: {OUT}/summary.json")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
