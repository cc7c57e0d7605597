"""Probe grid speed: `fit_probe_grid` (all cells batched) vs a per-cell scikit-learn loop.

Synthetic activations shaped like the real run (400 examples x 30 hooks x 15 positions x 576),
with correlated features (power-law scales, a shared low-rank part, a few massive dimensions),
a planted "correct" direction in some cells and ~10% of (example, position) pairs missing.
The baseline is `LogisticRegressionCV` per cell with the same Cs, the same stratified folds
(`PredefinedSplit`), the same standardisation and sklearn's default tolerance. Both sides get
the same number of threads. Reports both times, the ratio, the peak RSS increase of each and
the largest test-AUC difference. Run small:
`.venv/bin/python benchmarks/bench_probe_grid.py --hooks 10 --positions 5`
"""

from __future__ import annotations

import argparse
import threading
import time
import warnings
from contextlib import contextmanager

import numpy as np
import torch
from sklearn.linear_model import LogisticRegressionCV
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import PredefinedSplit
from threadpoolctl import threadpool_limits

from tl_truth.probing.grid import fit_probe_grid
from tl_truth.probing.metrics import stratified_folds
from tl_truth.probing.solver import DEFAULT_CS, STD_FLOOR


def synthetic(n: int, n_hooks: int, n_positions: int, d: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, generator=g) < 0.55).long()
    scales = torch.arange(1, d + 1, dtype=torch.float32) ** -0.5
    scales[torch.randperm(d, generator=g)[:4]] = 30.0  # massive activations
    X = torch.randn(n, n_hooks, n_positions, d, generator=g) * scales
    X += torch.randn(n, n_hooks, n_positions, 16, generator=g) @ torch.randn(16, d, generator=g)
    u = torch.randn(d, generator=g)
    u /= u.norm()
    # Signal grows with depth and is strongest at the later positions, absent in the first.
    depth = torch.linspace(0, 1, n_hooks)[:, None] * torch.linspace(0, 1, n_positions)[None]
    strength = 2.0 * depth * (torch.arange(n_hooks) > 0)[:, None]
    X += (y[:, None, None, None] - 0.5) * strength[None, ..., None] * u
    valid = torch.rand(n, n_positions, generator=g) < 0.9
    valid[:, 0] = True
    train = torch.rand(n, generator=g) < 0.7
    return X, y, valid, train, ~train


@contextmanager
def peak_rss():
    """Peak resident-set increase (MiB) while the block runs, sampled every 5 ms."""
    page = 4096
    result = {"mib": float("nan")}

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    base, peak, stop = rss(), [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.005)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        yield result
    finally:
        stop.set()
        t.join()
        result["mib"] = (max(peak[0], rss()) - base) / 2**20


def sklearn_grid(X, y, valid, train, test, Cs, cv, seed):
    """Per-cell loop: standardise, LogisticRegressionCV on the same folds, test AUC."""
    n, H, P, d = X.shape
    auc, chosen = np.full((H, P), np.nan), np.full((H, P), np.nan)
    yn = y.numpy()
    for p in range(P):
        tr = (train & valid[:, p]).numpy()
        te = (test & valid[:, p]).numpy()
        fold = stratified_folds(y, train & valid[:, p], cv, seed).numpy()[tr]
        for h in range(H):
            Xn = X[:, h, p].double().numpy()
            mu, sd = Xn[tr].mean(0), np.maximum(Xn[tr].std(0), STD_FLOOR)
            clf = LogisticRegressionCV(
                Cs=list(Cs), cv=PredefinedSplit(fold), scoring="roc_auc", max_iter=500
            )
            clf.fit((Xn[tr] - mu) / sd, yn[tr])
            auc[h, p] = roc_auc_score(yn[te], clf.decision_function((Xn[te] - mu) / sd))
            chosen[h, p] = clf.C_[0]
    return auc, chosen


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--hooks", type=int, default=30)
    ap.add_argument("--positions", type=int, default=15)
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--cv", type=int, default=3)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)

    X, y, valid, train, test = synthetic(args.n, args.hooks, args.positions, args.d, args.seed)
    hooks = [f"blocks.{i}.hook_resid_post" for i in range(args.hooks)]
    positions = [f"pos{j}" for j in range(args.positions)]
    kw = dict(valid=valid, cv=args.cv, seed=args.seed, progress=False)
    print(f"X {tuple(X.shape)} ({X.numel() * 4 / 2**20:.0f} MiB), threads={args.threads}")

    # Like for like with the sklearn loop: no bootstrap, no shuffled control.
    with peak_rss() as mem_fit:
        t0 = time.perf_counter()
        fit_probe_grid(X, y, train, test, hooks, positions, n_boot=0, shuffled_control=False, **kw)
        t_fit = time.perf_counter() - t0
    with peak_rss() as mem_full:
        t0 = time.perf_counter()
        grid = fit_probe_grid(X, y, train, test, hooks, positions, n_boot=args.n_boot, **kw)
        t_full = time.perf_counter() - t0
    with threadpool_limits(args.threads), peak_rss() as mem_sk:
        t0 = time.perf_counter()
        sk_auc, sk_c = sklearn_grid(X, y, valid, train, test, DEFAULT_CS, args.cv, args.seed)
        t_sk = time.perf_counter() - t0

    diff = np.abs(grid.auc - sk_auc)
    same_c = np.isclose(grid.C, sk_c)
    cells = grid.auc.size
    print(
        f"fit_probe_grid (CV + refit only):          {t_fit:7.2f} s  peak +{mem_fit['mib']:.0f} MiB"
    )
    print(
        f"fit_probe_grid (+ shuffled, {args.n_boot} bootstraps): {t_full:7.2f} s  "
        f"peak +{mem_full['mib']:.0f} MiB"
    )
    print(
        f"sklearn LogisticRegressionCV loop:         {t_sk:7.2f} s  peak +{mem_sk['mib']:.0f} MiB"
    )
    print(f"speed-up: {t_sk / t_fit:.1f}x (like for like), {t_sk / t_full:.1f}x (full grid)")
    print(f"cells: {cells}; same C chosen in {same_c.sum()}/{cells}")
    print(
        f"max |AUC diff| all cells: {np.nanmax(diff):.4f}; same-C cells: {diff[same_c].max():.4f}"
    )
    print(f"best cell: {grid.best()}")
    print(f"shuffled-control AUC: mean {np.nanmean(grid.auc_shuffled):.3f}")
    print(
        f"SUMMARY grid_speedup={t_sk / t_fit:.2f} grid_max_abs_dauc={np.nanmax(diff):.4f} "
        f"grid_max_abs_dauc_same_c={diff[same_c].max():.4f} grid_same_c={same_c.sum()}/{cells}"
    )
    assert diff[same_c].max() < 0.02, "AUCs disagree with scikit-learn on cells with the same C"
    assert same_c.mean() >= 0.9, "C selection disagrees with scikit-learn too often"


if __name__ == "__main__":
    main()
