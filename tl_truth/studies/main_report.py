"""`ProbeReport`: what the main job (`tl-truth run`) measured, as report.json / report.md.

The report holds the probe grid, the cell selected per position group by train
cross-validation, the baselines, the same-examples table and the artefact controls, and renders
them: the headline table (`to_dataframe`), the lead paragraph on artefacts and the timings
(`markdown_notes`), the grid heatmap (`plot`). It lives apart from the pipeline that fills it
(`tl_truth.studies.main_job`), so reading a saved report needs none of the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tl_truth.probing.grid import ProbeGrid
from tl_truth.results import Result, markdown_table


@dataclass
class ProbeReport(Result):
    """Everything `tl-truth run` measured; `to_json()` is report.json.

    The result protocol (`tl_truth.results.Result`): `save(dir)` writes `report.json`,
    `report.md`, `probe_grid.png` and the best exact-answer probe (`best_probe.*`);
    `ProbeReport.load(dir)` reads report.json back (its grid holds the metrics, not the
    probes' weights: load `best_probe` with `Probe.load` for that).

    Attributes:
        summary: the answers' summary (`AnswerRun.summary`: model, dataset, splits, accuracy).
        grid: the `ProbeGrid` (a probe per hook x position, test AUCs and CIs).
        baselines: baseline name -> {"auc", "ci", "n"} on the test split.
        selected: position group ("exact", "last_generated", "last_prompt", "any") -> the
            cell chosen by train CV and its test AUC (None: no cell could be chosen).
        timings: seconds per stage.
        same_examples: every method on the test examples with an exact answer.
        artefacts: controls, permutation null, PRR (`studies.artefacts`).
        capture: how the activations were captured: "path" ("fused": inside generation,
            "two_pass": a second forward pass, or "mixed"), rows per path and the reasons for
            the two-pass rows (the activation store's `meta["capture"]`).

    >>> import tempfile
    >>> from tl_truth.probing import ProbeGrid
    >>> grid = ProbeGrid.from_dict({"hooks": ["blocks.1.hook_resid_post"],
    ...                             "positions": ["exact_last"], "auc": [[0.8]], "n_test": [[20]]})
    >>> summary = {"model": {"name": "tiny", "backend": "bridge", "processing": "hf",
    ...                      "fingerprint": "f"},
    ...            "dataset": {"name": "capitals"}, "n": 40, "splits": {"train": 20, "test": 20},
    ...            "accuracy": 0.5, "exact_answer_rate": 1.0, "per_task": {}}
    >>> logits = {"logits_mean": {"auc": 0.7, "ci": [0.6, 0.8], "n": 20}}
    >>> report = ProbeReport(summary, grid, baselines=logits, selected={"exact": None})
    >>> report.to_dataframe()[["method", "auc", "n_test"]].values.tolist()
    [['logits_mean', 0.7, 20]]
    >>> with tempfile.TemporaryDirectory() as d:
    ...     back = ProbeReport.load(report.save(d))
    >>> back.grid.auc.tolist(), back.baselines == logits
    ([[0.8]], True)
    """

    summary: dict
    grid: ProbeGrid
    baselines: dict
    selected: dict  # position group -> the cell chosen by train CV and its test AUC
    timings: dict = field(default_factory=dict)
    same_examples: dict | None = None  # every method on the test examples with an exact answer
    artefacts: dict | None = None  # controls, permutation null, PRR: `studies.artefacts`
    capture: dict | None = None  # which capture path served how many answers

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
            "capture": self.capture,
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
            d.get("capture"),
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
        c = self.capture
        if c:
            why = ", ".join(f"{k} {v}" for k, v in (c.get("two_pass_reasons") or {}).items())
            lines.append(
                f"Activations: {c['fused_rows']} answers captured inside generation, "
                f"{c['two_pass_rows']} by a second forward pass"
                + (f" ({why})" if why else "")
                + "."
            )
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
    """A metric as the reports print it.

    Args:
        v: the value (None or NaN: not available).

    Returns:
        Three decimals, or "n/a".

    >>> fmt_value(0.91234), fmt_value(None), fmt_value(float("nan"))
    ('0.912', 'n/a', 'n/a')
    """
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
