"""The main job: generate -> capture -> probe grid -> baselines -> one report.

Where in the model, and at which token, does an activation tell us the answer is wrong, and is
that better than the model's own confidence? Every number in the report is on the same test
split; the cell called "best" is chosen by cross-validation on the train split only (choosing
it by test AUC would flatter it), then its test AUC is reported with a bootstrap CI.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tl_truth.answers.generation import GenerationConfig, same_generation_settings
from tl_truth.answers.positions import NAMED_POSITIONS
from tl_truth.answers.prompts import PromptFormat
from tl_truth.answers.run import AnswerRun, answer_questions
from tl_truth.data.questions import QADataset
from tl_truth.probing.activations import ActivationStore, capture, default_hooks
from tl_truth.probing.baselines import evaluate_baselines, logit_scores, p_true_scores
from tl_truth.probing.grid import ProbeGrid, fit_probe_grid
from tl_truth.results import json_safe

EXACT_POSITIONS = ("before_exact", "exact_first", "exact_last", "after_exact")
LAST_TOKEN_POSITIONS = ("last_generated", "last_prompt")


@dataclass
class ProbeReport:
    """Everything `tl-truth run` measured; `to_dict()` is report.json."""

    summary: dict
    grid: ProbeGrid
    baselines: dict
    selected: dict  # position group -> the cell chosen by train CV and its test AUC
    timings: dict = field(default_factory=dict)
    same_examples: dict | None = None  # every method on the test examples with an exact answer

    def to_dict(self) -> dict:
        g = self.grid
        nan_to_none = _nan_to_none
        return {
            "model": self.summary["model"],
            "dataset": self.summary["dataset"]["name"],
            "n_examples": self.summary["n"],
            "n_train": int(self.summary["splits"].get("train", 0)),
            "n_test": int(self.summary["splits"].get("test", 0)),
            "accuracy": self.summary["accuracy"],
            "exact_answer_rate": self.summary["exact_answer_rate"],
            "hooks": g.hooks,
            "layers": g.layers,
            "positions": g.positions,
            "auc": nan_to_none(g.auc),
            "auc_ci_low": nan_to_none(g.auc_ci_low),
            "auc_ci_high": nan_to_none(g.auc_ci_high),
            "auc_mean_diff": nan_to_none(g.auc_mean_diff),
            "auc_shuffled": nan_to_none(g.auc_shuffled),
            "n_test_per_cell": np.asarray(g.n_test).tolist(),
            "best": self.selected["exact"],
            "selected": self.selected,
            "baselines": self.baselines,
            "shuffled_control": {
                "auc": (self.selected["exact"] or {}).get("auc_shuffled"),
                "auc_grid_mean": _nanmean(g.auc_shuffled),
            },
            "same_examples": self.same_examples,
            "per_task": self.summary["per_task"],
            "timings": self.timings,
        }

    def headline(self) -> list[tuple[str, str, float | None, list | None, int | None]]:
        """(method, where, auc, ci, n_test) rows, best first within each group."""
        rows = []
        for group, label in (
            ("exact", "probe @ exact answer"),
            ("last_generated", "probe @ last generated token"),
            ("last_prompt", "probe @ last prompt token"),
        ):
            s = self.selected.get(group)
            if s:
                rows.append(
                    (label, f"{s['hook']} / {s['position']}", s["auc"], s["ci"], s["n_test"])
                )
        ex = self.selected.get("exact")
        if ex:
            rows.append(
                (
                    "mean-difference probe, same cell",
                    f"{ex['hook']} / {ex['position']}",
                    ex.get("auc_mean_diff"),
                    None,
                    ex["n_test"],
                )
            )
            rows.append(
                (
                    "shuffled-label control, same cell",
                    f"{ex['hook']} / {ex['position']}",
                    ex.get("auc_shuffled"),
                    None,
                    ex["n_test"],
                )
            )
        for name, b in self.baselines.items():
            rows.append((name, "", b["auc"], b["ci"], b["n"]))
        return rows

    def to_markdown(self) -> str:
        s = self.summary
        lines = [
            f"# tl_truth report: {s['model']['name']} on {s['dataset']['name']}",
            "",
            f"{s['n']} questions ({s['splits'].get('train', 0)} train / "
            f"{s['splits'].get('test', 0)} test), greedy accuracy {s['accuracy']:.3f}, "
            f"exact answer located for {s['exact_answer_rate']:.1%}. "
            f"Backend `{s['model']['backend']}`, weights `{s['model']['processing']}`, "
            f"fingerprint `{s['model']['fingerprint']}`.",
            "",
            "Error detection on the test split (ROC AUC of P(answer is correct); 95% bootstrap "
            "CI). Probe cells are chosen by 3-fold cross-validation on the train split only.",
            "",
            "| method | where | AUC | 95% CI | n test |",
            "|---|---|---|---|---|",
        ]
        for method, where, auc, ci, n in self.headline():
            lines.append(
                f"| {method} | {where} | {fmt_value(auc)} | {_fmt_ci(ci)} | {n if n is not None else ''} |"
            )
        if self.same_examples:
            lines += [
                "",
                f"The same methods on the same {self.same_examples['n']} test examples (those "
                "with a located exact answer):",
                "",
                "| method | AUC | 95% CI |",
                "|---|---|---|",
            ]
            for name, b in self.same_examples["auc"].items():
                lines.append(f"| {name} | {fmt_value(b['auc'])} | {_fmt_ci(b['ci'])} |")
        lines += ["", "![probe grid](probe_grid.png)", ""]
        t = self.timings
        lines.append("Timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in t.items()))
        return "\n".join(lines) + "\n"

    def plot(self):
        return self.grid.plot()


def fmt_value(v: float | None) -> str:
    return "n/a" if v is None or np.isnan(v) else f"{v:.3f}"


def _fmt_ci(ci: Any) -> str:
    if not ci or ci[0] is None or np.isnan(ci[0]):
        return ""
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _nan_to_none(a: Any) -> Any:
    arr = np.asarray(a, dtype=float)
    return [[None if np.isnan(v) else round(float(v), 4) for v in row] for row in arr]


def _nanmean(a: Any) -> float | None:
    arr = np.asarray(a, dtype=float)
    return None if np.all(np.isnan(arr)) else round(float(np.nanmean(arr)), 4)


def select_cell(grid: ProbeGrid, positions: tuple[str, ...]) -> dict | None:
    """The cell among `positions` with the best train cross-validation AUC, with extras."""
    positions = tuple(p for p in positions if p in grid.positions)
    if not positions:
        return None
    try:
        best = grid.best(by="cv", positions=positions)
    except ValueError:
        return None
    h, p = grid.hooks.index(best["hook"]), grid.positions.index(best["position"])

    def at(a):
        v = float(np.asarray(a, dtype=float)[h, p])
        return None if np.isnan(v) else round(v, 4)

    return {
        "hook": best["hook"],
        "layer": best["layer"],
        "position": best["position"],
        "auc": at(grid.auc),
        "ci": [at(grid.auc_ci_low), at(grid.auc_ci_high)],
        "cv_auc": at(grid.cv_auc),
        "auc_mean_diff": at(grid.auc_mean_diff),
        "auc_shuffled": at(grid.auc_shuffled),
        "n_train": int(np.asarray(grid.n_train)[h, p]),
        "n_test": int(np.asarray(grid.n_test)[h, p]),
    }


def probe_report(
    model: Any,
    run: AnswerRun,
    store: ActivationStore,
    n_boot: int = 1000,
    p_true: bool = True,
    seed: int = 0,
    progress: bool = True,
) -> ProbeReport:
    """Fit the probe grid on a captured store and compare with the baselines."""
    records = run.records
    t0 = time.perf_counter()
    acts, valid = store.load()
    labels = store.labels
    train, test = store.split_mask("train"), store.split_mask("test")
    grid = fit_probe_grid(
        acts,
        labels,
        train,
        test,
        store.hooks,
        store.positions,
        valid=valid,
        n_boot=n_boot,
        seed=seed,
        model=store.model,
        progress=progress,
    )
    t_probe = time.perf_counter() - t0

    t1 = time.perf_counter()
    scores = logit_scores(records)
    if p_true:
        # Baselines are only evaluated on the test split: judge only those answers.
        test_rows = np.flatnonzero(test.numpy())
        judged = p_true_scores(model, [records[i] for i in test_rows], progress=progress)
        scores["p_true"] = np.full(len(records), np.nan)
        scores["p_true"][test_rows] = judged
    baselines = evaluate_baselines(scores, labels.numpy(), test.numpy(), n_boot=n_boot, seed=seed)
    t_base = time.perf_counter() - t1

    selected = {
        "exact": select_cell(grid, EXACT_POSITIONS),
        "last_generated": select_cell(grid, ("last_generated",)),
        "last_prompt": select_cell(grid, ("last_prompt",)),
        "any": select_cell(grid, tuple(store.positions)),
    }
    same = same_examples(grid, selected, acts, valid, store, scores, n_boot, seed)
    return ProbeReport(
        run.summary,
        grid,
        baselines,
        selected,
        {"probe_s": round(t_probe, 2), "baselines_s": round(t_base, 2)},
        same_examples=same,
    )


def same_examples(grid, selected, acts, valid, store, scores, n_boot, seed) -> dict | None:
    """Every method on the *same* test examples: those that have an exact answer.

    The exact-answer probe can only be scored where an exact answer was located, which may be
    an easier or harder subset than the whole test split; this table removes that difference.
    """
    ex = selected.get("exact")
    if ex is None:
        return None
    p_ex = store.positions.index(ex["position"])
    test = store.split_mask("test") & valid[:, p_ex]
    rows = torch.nonzero(test).squeeze(1)
    method_scores = {}
    for group in ("exact", "last_generated", "last_prompt"):
        cell = selected.get(group)
        if cell is None:
            continue
        h, p = store.hooks.index(cell["hook"]), store.positions.index(cell["position"])
        probe = grid.probe(cell["hook"], cell["position"])
        full = np.full(len(store), np.nan)
        full[rows.numpy()] = probe.decision_function(acts[rows, h, p]).double().numpy()
        method_scores[f"probe @ {group} ({cell['hook']} / {cell['position']})"] = full
    method_scores.update(scores)
    table = evaluate_baselines(
        method_scores, store.labels.numpy(), test.numpy(), n_boot=n_boot, seed=seed
    )
    return {"n": int(test.sum()), "auc": table}


def run_all(
    model: Any,
    dataset: QADataset,
    out_dir: str | Path,
    config: GenerationConfig | None = None,
    fmt: PromptFormat | None = None,
    hooks: list[str] | None = None,
    positions: tuple[str, ...] = NAMED_POSITIONS,
    n_boot: int = 1000,
    p_true: bool = True,
    extract_with_model: bool = True,
    progress: bool = True,
) -> ProbeReport:
    """`tl-truth run`: everything, written to `out_dir` (reuses finished generations/shards)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    config = config or GenerationConfig()
    gen_file = out / "generations.jsonl"
    if gen_file.exists() and _same_questions(gen_file, dataset):
        run = AnswerRun.load(out)  # resume: generation is the slow part
        if not same_generation_settings(run.summary.get("generation"), config):
            raise ValueError(
                f"{out} holds generations made with other settings "
                f"({run.summary.get('generation')}); use another --out or delete it"
            )
    else:
        run = answer_questions(model, dataset, config, fmt, extract_with_model, progress)
        run.save(out)
    t_gen = time.perf_counter() - t0
    t1 = time.perf_counter()
    store = capture(
        model,
        run.records,
        out / "activations",
        hooks=hooks or default_hooks(model),
        positions=positions,
        progress=progress,
    )
    t_cap = time.perf_counter() - t1
    report = probe_report(model, run, store, n_boot=n_boot, p_true=p_true, progress=progress)
    report.timings = {"generate_s": round(t_gen, 2), "capture_s": round(t_cap, 2), **report.timings}
    save_report(report, out)
    return report


def _same_questions(gen_file: Path, dataset: QADataset) -> bool:
    with gen_file.open() as f:
        ids = [(r["task"], r["id"]) for r in map(json.loads, f)]
    return ids == [(q.task, q.id) for q in dataset.questions]


def save_report(report: ProbeReport, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out / "report.json").write_text(json.dumps(json_safe(report.to_dict()), indent=2))
    (out / "report.md").write_text(report.to_markdown())
    fig = report.grid.plot()
    fig = getattr(fig, "figure", fig)
    fig.savefig(out / "probe_grid.png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    best = report.selected.get("exact") or report.selected.get("any")
    if best:
        report.grid.probe(best["hook"], best["position"]).save(out / "best_probe")
