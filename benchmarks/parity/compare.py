"""Compare the README runs' JSON before/after: every key present before must be equal after.

Keys that changed on purpose are listed in CHANGED; timings are ignored.
"""

import json
import sys
from pathlib import Path

CHANGED = {("report.json", "shuffled_control", "auc")}  # now the permutation null mean
IGNORE = {
    "timings",
    "generate_s",
    "capture_s",
    "probe_s",
    "baselines_s",
    "elapsed_s",
    "load_model_s",
}


def walk(a, b, path, out, fname):
    if isinstance(a, dict):
        if not isinstance(b, dict):
            out.append((path, "type"))
            return
        for k in a:
            if k in IGNORE or (fname, *path, k) in CHANGED:
                continue
            if k not in b:
                out.append((path + (k,), "missing after"))
                continue
            walk(a[k], b[k], path + (k,), out, fname)
    elif isinstance(a, list):
        if not isinstance(b, list) or len(a) != len(b):
            out.append((path, f"list {len(a)} vs {len(b) if isinstance(b, list) else type(b)}"))
            return
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            walk(x, y, path + (i,), out, fname)
    elif a != b:
        out.append((path, f"{a!r} != {b!r}"))


before, after = Path(sys.argv[1]), Path(sys.argv[2])
n = 0
for f in sorted(before.rglob("*.json")):
    if f.parent.name == "activations" or f.name in ("summary.json", "best_probe.json"):
        continue
    g = after / f.relative_to(before)
    diffs = []
    walk(json.loads(f.read_text()), json.loads(g.read_text()), (), diffs, f.name)
    n += 1
    for p, why in diffs[:10]:
        print(f"{f.relative_to(before)} {'.'.join(map(str, p))}: {why}")
print(f"# compared {n} files", file=sys.stderr)
