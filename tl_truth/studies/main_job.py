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

from tl_truth.answers.exact_answer import Locate
from tl_truth.answers.generation import GenerationConfig, same_generation_settings
from tl_truth.answers.positions import NAMED_POSITIONS
from tl_truth.answers.prompts import PromptFormat
from tl_truth.answers.run import AnswerRun, answer_questions, relocate
from tl_truth.data.questions import QADataset
from tl_truth.probing.activations import ActivationStore, capture, default_hooks
from tl_truth.probing.baselines import evaluate_baselines, logit_scores, p_true_scores
from tl_truth.probing.grid import ProbeGrid, fit_probe_grid
from tl_truth.results import Result, markdown_table
from tl_truth.studies.artefacts import EMBED_HOOK, artefact_report, method_scores

EXACT_POSITIONS = ("before_exact", "exact_first", "exact_last", "after_exact")
LAST_TOKEN_POSITIONS = ("last_generated", "last_prompt")


@dataclass
class ProbeReport(Result):
    """Everything `tl-truth run` measured; `to_json()` is report.json.

    The result protocol (`tl_truth.results.Result`): `save(dir)` writes `report.json`,
    `report.md`, `probe_grid.png` and the best exact-answer probe (`best_probe.*`);
    `ProbeReport.load(dir)` reads report.json back (its grid holds the metrics, not the
    probes' weights: load `best_probe` with `Probe.load` for that).
    """

    summary: dict
    grid: ProbeGrid
    baselines: dict
    selected: dict  # position group -> the cell chosen by train CV and its test AUC
    timings: dict = field(default_factory=dict)
    same_examples: dict | None = None  # every method on the test examples with an exact answer
    artefacts: dict | None = None  # controls, permutation null, PRR: `studies.artefacts`

    result_name = "report"
    figure_name = "probe_grid"
    json_ensure_ascii = True  # report.json has always been ASCII

    def to_dict(self) -> dict:
        g = self.grid
        a = self.artefacts or {}
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
            "auc": _grid_list(g.auc),
            "auc_ci_low": _grid_list(g.auc_ci_low),
            "auc_ci_high": _grid_list(g.auc_ci_high),
            "auc_mean_diff": _grid_list(g.auc_mean_diff),
            "auc_shuffled": _grid_list(g.auc_shuffled),
            "n_test_per_cell": np.asarray(g.n_test).tolist(),
            "best": self.selected["exact"],
            "selected": self.selected,
            "baselines": self.baselines,
            "locate": self.summary.get("locate", "paper"),
            "located_rate": self.summary.get("located_rate"),
            **{k: a.get(k) for k in ARTEFACT_KEYS},
            "shuffled_control": {
                # the mean of the permutation null (one shuffled draw is too noisy to read)
                "auc": (a.get("permutation") or {}).get("null_mean"),
                "single_draw_auc": (self.selected["exact"] or {}).get("auc_shuffled"),
                # a report read back from report.json keeps the mean of the unrounded grid
                "auc_grid_mean": g.metadata.get("auc_shuffled_mean", _nanmean(g.auc_shuffled)),
            },
            "same_examples": self.same_examples,
            "per_task": self.summary["per_task"],
            "timings": self.timings,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ProbeReport:
        """A report from report.json: the grid has its metrics, not its probes."""
        summary = {
            "model": d["model"],
            "dataset": {"name": d["dataset"]},
            "n": d["n_examples"],
            "splits": {"train": d["n_train"], "test": d["n_test"]},
            "accuracy": d["accuracy"],
            "exact_answer_rate": d["exact_answer_rate"],
            "per_task": d.get("per_task", {}),
            "locate": d.get("locate", "paper"),
            "located_rate": d.get("located_rate"),
        }
        grid = ProbeGrid.from_dict(
            {
                "hooks": d["hooks"],
                "layers": d["layers"],
                "positions": d["positions"],
                "kind": "logistic",  # `tl-truth run` fits logistic probes
                "auc": d["auc"],
                "auc_ci_low": d["auc_ci_low"],
                "auc_ci_high": d["auc_ci_high"],
                "auc_mean_diff": d["auc_mean_diff"],
                "auc_shuffled": d["auc_shuffled"],
                "n_test": d["n_test_per_cell"],
                "model": d["model"],
                "metadata": {
                    "auc_shuffled_mean": (d.get("shuffled_control") or {}).get("auc_grid_mean")
                },
            }
        )
        return cls(
            summary,
            grid,
            d["baselines"],
            d["selected"],
            d.get("timings") or {},
            d.get("same_examples"),
            {k: d.get(k) for k in ARTEFACT_KEYS} if d.get("controls") else None,
        )

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
                    "one shuffled-label draw, same cell (noisy: see the permutation null)",
                    f"{ex['hook']} / {ex['position']}",
                    ex.get("auc_shuffled"),
                    None,
                    ex["n_test"],
                )
            )
        a = self.artefacts or {}
        if ex and a.get("controls"):
            where = f"{ex['hook']} / {ex['position']} examples"
            for name, label in (
                ("answer_prior", "control: P(correct | exact answer string), train lookup"),
                ("task_prior", "control: P(correct | task), train lookup"),
                ("embedding", "control: probe on the token embedding"),
            ):
                c = a["controls"].get(name)
                if c:
                    rows.append((label, where, c["auc"], c["ci"], c["n"]))
        if ex and a.get("permutation"):
            perm = a["permutation"]
            rows.append(
                (
                    f"permutation null mean ({perm['n']} permutations, cell re-selected)",
                    f"95th percentile {fmt_value(perm['null_p95'])}",
                    perm["null_mean"],
                    None,
                    ex["n_test"],
                )
            )
        for name, b in self.baselines.items():
            rows.append((name, "", b["auc"], b["ci"], b["n"]))
        return rows

    def to_dataframe(self):
        """The headline: one row per method (probes at their chosen cells, baselines)."""
        import pandas as pd

        rows = [
            {
                "method": method,
                "where": where,
                "auc": _float(auc),
                "ci_low": _float(ci[0]) if ci else None,
                "ci_high": _float(ci[1]) if ci else None,
                "n_test": n,
            }
            for method, where, auc, ci, n in self.headline()
        ]
        df = pd.DataFrame(rows, columns=["method", "where", "auc", "ci_low", "ci_high", "n_test"])
        df["n_test"] = df["n_test"].astype("Int64")
        return df

    def title(self) -> str:
        s = self.summary
        return f"tl_truth report: {s['model']['name']} on {s['dataset']['name']}"

    def markdown_frame(self):
        df = self.to_dataframe()
        ci = [_fmt_ci([lo, hi]) for lo, hi in zip(df["ci_low"], df["ci_high"], strict=True)]
        return df.assign(ci=ci)[["method", "where", "auc", "ci", "n_test"]].set_axis(
            ["method", "where", "AUC", "95% CI", "n test"], axis=1
        )

    def markdown_notes(self) -> str:
        import pandas as pd

        s = self.summary
        lines = _artefact_lines(self.artefacts, s) + [
            "Error detection on the test split (ROC AUC of P(answer is correct); 95% bootstrap "
            "CI). Probe cells are chosen by 3-fold cross-validation on the train split only.",
            "",
            f"{s['n']} questions ({s['splits'].get('train', 0)} train / "
            f"{s['splits'].get('test', 0)} test), greedy accuracy {s['accuracy']:.3f}, "
            f"exact answer located for {s['exact_answer_rate']:.1%}. "
            f"Backend `{s['model']['backend']}`, weights `{s['model']['processing']}`, "
            f"fingerprint `{s['model']['fingerprint']}`.",
        ]
        if self.same_examples:
            same = pd.DataFrame(
                [
                    {
                        "method": name,
                        "AUC": _float(b["auc"]),
                        "95% CI": _fmt_ci(b["ci"]),
                        "PRR": _float(((self.artefacts or {}).get("prr") or {}).get(name)),
                        "acc @ 80% cov.": _float(
                            ((self.artefacts or {}).get("accuracy_at_80_coverage") or {}).get(name)
                        ),
                    }
                    for name, b in self.same_examples["auc"].items()
                ],
                columns=["method", "AUC", "95% CI", "PRR", "acc @ 80% cov."],
            )
            lines += [
                "",
                f"The same methods on the same {self.same_examples['n']} test examples (those "
                "with a located exact answer):",
                "",
                markdown_table(same),
            ]
        lines += ["", "![probe grid](probe_grid.png)", ""]
        t = self.timings
        lines.append("Timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in t.items()))
        return "\n".join(lines) + "\n"

    @property
    def figsize(self) -> tuple[float, float]:
        return self.grid.figsize

    def plot(self, ax=None):
        """The probe grid's test AUC heatmap (`ProbeGrid.plot`)."""
        return self.grid.plot(ax=ax)

    def save(self, out_dir: str | Path) -> Path:
        """report.json, report.md, probe_grid.png and the best probe (`best_probe.*`)."""
        out = super().save(out_dir)
        best = self.selected.get("exact") or self.selected.get("any")
        if best and self.grid.has_weights:
            self.grid.probe(best["hook"], best["position"]).save(out / "best_probe")
        return out


ARTEFACT_KEYS = (
    "controls",
    "beyond_artefacts",
    "per_task_auc",
    "permutation",
    "prr",
    "accuracy_at_80_coverage",
    "risk_coverage",
)


def _artefact_lines(a: dict | None, summary: dict) -> list[str]:
    """The report's lead: the probe's AUC beyond its strongest artefact, and the caveats."""
    lines = []
    rate = summary.get("located_rate") or {}
    if rate.get("correct") is not None and rate.get("incorrect") is not None:
        lines.append(
            f"Exact answer located (`--locate {summary.get('locate', 'paper')}`) for "
            f"{rate['correct']:.1%} of right and {rate['incorrect']:.1%} of wrong answers."
            + (f" **Warning:** {rate['warning']}." if rate.get("warning") else "")
        )
        lines.append("")
    if not a or not a.get("beyond_artefacts"):
        return lines
    b = a["beyond_artefacts"]
    if b.get("auc_diff") is not None:
        lo, hi = b["ci"] if b["ci"][0] is not None else (float("nan"), float("nan"))
        verdict = (
            "beyond its artefacts"
            if lo > 0
            else "**not** distinguishable from its strongest artefact"
        )
        lines.append(
            f"**Beyond artefacts: {b['auc_diff']:+.3f} AUC** [{lo:+.3f}, {hi:+.3f}] "
            f"(probe {b['auc']:.3f} vs `{b['against']}` {b['against_auc']:.3f} on the same "
            f"{b['n']} test answers): the probe is {verdict}."
        )
    w = (a.get("controls") or {}).get("within_answer") or {}
    if w.get("n_pairs"):
        lines.append(
            f"Within answer (right vs wrong answers naming the same exact answer, "
            f"{w['n_pairs']} pairs in {w['n_groups']} groups): probe AUC "
            f"{fmt_value(b['within_answer_auc'])} {_fmt_ci(b['within_answer_ci'])}."
        )
    perm = a.get("permutation")
    if perm:
        lines.append(
            f"Permutation null ({perm['n']} permutations of the train labels, cell re-selected): "
            f"mean {fmt_value(perm['null_mean'])}, 95th percentile {fmt_value(perm['null_p95'])}, "
            f"p = {perm['p_value']:.3g}."
        )
    unseen = (a.get("controls") or {}).get("unseen_answers") or {}
    if unseen:
        lines.append(
            f"Unseen answers (never in train): {unseen['n']} ({unseen['n_correct']} right, "
            f"{unseen['n_incorrect']} wrong)"
            + (f"; {unseen['note']}" if unseen.get("note") else "")
            + "."
        )
    return lines + [""]


def fmt_value(v: float | None) -> str:
    return "n/a" if v is None or np.isnan(v) else f"{v:.3f}"


def _fmt_ci(ci: Any) -> str:
    if not ci or ci[0] is None or np.isnan(ci[0]):
        return ""
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _float(v: Any) -> float | None:
    return None if v is None else float(v)


def _grid_list(a: Any) -> list[list[float]]:
    """An [H, P] array as nested lists at full precision (NaN stays NaN: null in the JSON)."""
    return [[float(v) for v in row] for row in np.asarray(a, dtype=float)]


def _nanmean(a: Any) -> float | None:
    arr = np.asarray(a, dtype=float)
    return None if np.all(np.isnan(arr)) else float(np.nanmean(arr))


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
        return None if np.isnan(v) else v

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
    n_perm: int = 100,
) -> ProbeReport:
    """Fit the probe grid on a captured store; compare with the baselines and the controls.

    The token-embedding hook (captured for the embedding control) is not part of the grid.
    `n_perm` label permutations give the null of the selected exact-answer cell (0: none).
    """
    records = run.records
    t0 = time.perf_counter()
    grid_hooks = [h for h in store.hooks if h != EMBED_HOOK]
    acts, valid = store.load(hooks=grid_hooks)
    labels = store.labels
    train, test = store.split_mask("train"), store.split_mask("test")
    grid = fit_probe_grid(
        acts,
        labels,
        train,
        test,
        grid_hooks,
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
    # every probe and baseline scored once, for the same-examples table and the controls
    methods = method_scores(grid, selected, acts, valid, grid.hooks, grid.positions, scores)
    same = same_examples(methods, selected, valid, store, grid.positions, n_boot, seed)
    t2 = time.perf_counter()
    artefacts = artefact_report(
        grid,
        store,
        records,
        selected,
        acts,
        valid,
        methods,
        EXACT_POSITIONS,
        n_boot=n_boot,
        n_perm=n_perm,
        seed=seed,
        progress=progress,
    )
    t_controls = time.perf_counter() - t2
    return ProbeReport(
        run.summary,
        grid,
        baselines,
        selected,
        {
            "probe_s": round(t_probe, 2),
            "baselines_s": round(t_base, 2),
            "controls_s": round(t_controls, 2),
        },
        same_examples=same,
        artefacts=artefacts,
    )


def same_examples(methods, selected, valid, store, positions, n_boot, seed) -> dict | None:
    """Every method on the *same* test examples: those that have an exact answer.

    The exact-answer probe can only be scored where an exact answer was located, which may be
    an easier or harder subset than the whole test split; this table removes that difference.
    `methods` are every method's scores per example (`studies.artefacts.method_scores`).
    """
    ex = selected.get("exact")
    if ex is None:
        return None
    test = store.split_mask("test") & valid[:, positions.index(ex["position"])]
    table = evaluate_baselines(
        methods, store.labels.numpy(), test.numpy(), n_boot=n_boot, seed=seed
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
    locate: Locate = "blind",
    n_perm: int = 100,
) -> ProbeReport:
    """`tl-truth run`: everything, written to `out_dir` (reuses finished generations/shards).

    Args:
        model: a HookedTransformer or TransformerBridge.
        dataset: the questions.
        out_dir: where generations.jsonl, activations/, report.* and best_probe.* go.
        config: generation settings; fmt: the prompt format.
        hooks: hooks to probe (default: every layer's resid_post); the token embedding is
            always captured too, for the embedding control.
        positions: named positions to capture.
        n_boot: bootstrap replicates for every CI.
        p_true: run the p(True) baseline (one extra forward pass per test answer).
        extract_with_model: the model-based exact-answer extraction fallback.
        locate: "blind" (default) or "paper": how the exact answer is located.
        n_perm: label permutations for the selected cell's null (0: none).

    Returns:
        The `ProbeReport` (also saved to `out_dir`).
    """
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
        if run.summary.get("locate", "paper") != locate:
            # same answers, another locator: locate again (no generation), keep the old file
            old = run.summary.get("locate", "paper")
            gen_file.replace(out / f"generations.locate-{old}.jsonl")
            if (out / "activations").exists():  # captured at the old positions
                (out / "activations").replace(out / f"activations.locate-{old}")
            run = relocate(model, dataset, run, locate, extract_with_model, config.batch_size)
            run.save(out)
    else:
        run = answer_questions(
            model, dataset, config, fmt, extract_with_model, progress, locate=locate
        )
        run.save(out)
    t_gen = time.perf_counter() - t0
    t1 = time.perf_counter()
    store = capture(
        model,
        run.records,
        out / "activations",
        hooks=[EMBED_HOOK, *[h for h in (hooks or default_hooks(model)) if h != EMBED_HOOK]],
        positions=positions,
        progress=progress,
    )
    t_cap = time.perf_counter() - t1
    report = probe_report(
        model, run, store, n_boot=n_boot, p_true=p_true, progress=progress, n_perm=n_perm
    )
    report.timings = {"generate_s": round(t_gen, 2), "capture_s": round(t_cap, 2), **report.timings}
    save_report(report, out)
    return report


def _same_questions(gen_file: Path, dataset: QADataset) -> bool:
    with gen_file.open() as f:
        ids = [(r["task"], r["id"]) for r in map(json.loads, f)]
    return ids == [(q.task, q.id) for q in dataset.questions]


def save_report(report: ProbeReport, out: str | Path) -> Path:
    """`report.save(out)`: report.json, report.md, probe_grid.png and best_probe.*."""
    return report.save(out)
