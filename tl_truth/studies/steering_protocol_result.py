"""The result of `tl-truth steer --directions ...`: one chosen setting per family, tested once.

Written as steering.json / .md / .png (`FamilySteeringResult.save`). The schema::

    {"selected_on": "validation", "units": "sd", "scopes": ["all"], "n_validation": 40,
     "n_test": 100, "n_random": 5,
     "baseline": {"validation_accuracy", "test_accuracy", "test_ci"},
     "alphas": {family: [alpha, ...]},
     "families": {family: {
         "selected": {"layer", "hook" | "k", "heads", "alpha", "push_norm", "scope",
                      "validation_accuracy", "validation_gain", ...},
         "validation": [every setting tried, same keys],
         "test": {"accuracy", "ci", "recovery_rate", "recovery_ci", "break_rate", "break_ci",
                  "n", "n_wrong_unsteered", "n_right_unsteered",
                  "random": {"n", "accuracy_mean", "accuracy_sd", "accuracy_ci",
                             "recovery_rate_mean", "break_rate_mean"},
                  "gain_over_unsteered": {"value", "ci"}, "gain_over_random": {"value", "ci"}}}},
     "skipped": {family: why}, "conclusion": "...", ...meta (model, dataset, positions)}
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tl_truth.results import Result, pyplot_axes

_FIELDS = (
    "selected_on",
    "families",
    "baseline",
    "n_validation",
    "n_test",
    "units",
    "scopes",
    "alphas",
    "n_random",
    "skipped",
    "conclusion",
)


def _ci(ci: list | None) -> str:
    if not ci or ci[0] is None:
        return ""
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]"


def _num(x: float | None, sign: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{x:+.3f}" if sign else f"{x:.3f}"


@dataclass
class FamilySteeringResult(Result):
    """Per family: the setting chosen on validation and its one evaluation on test.

    Attributes:
        families: family -> {"selected", "validation", "test"} (module docstring).
        baseline: unsteered accuracy on validation and on test (with its CI).
        n_validation, n_test: questions in each split.
        units: the alphas' units ("sd" or "abs").
        scopes: the scopes tried.
        alphas: family -> its alpha grid.
        n_random: random controls per chosen setting.
        skipped: family -> why it was not evaluated (e.g. no contrastive pairs).
        meta: the model, dataset, positions, seeds.

    >>> import tempfile
    >>> test = {"accuracy": 0.6, "ci": [0.4, 0.8], "recovery_rate": 0.5, "recovery_ci": [0.2, 0.8],
    ...         "break_rate": 0.1, "break_ci": [0.0, 0.3], "n": 10,
    ...         "random": {"n": 2, "accuracy_mean": 0.45, "accuracy_sd": 0.05},
    ...         "gain_over_unsteered": {"value": 0.1, "ci": [-0.1, 0.3]},
    ...         "gain_over_random": {"value": 0.15, "ci": [0.05, 0.3]}}
    >>> sel = {"layer": 3, "alpha": 2.0, "scope": "all", "validation_accuracy": 0.7}
    >>> res = FamilySteeringResult({"mass_mean": {"selected": sel, "validation": [sel], "test": test}},
    ...     {"validation_accuracy": 0.5, "test_accuracy": 0.5, "test_ci": [0.3, 0.7]}, 10, 10,
    ...     "sd", ["all"], {"mass_mean": [2.0]}, 2, {"contrastive": "no pairs"})
    >>> res.to_dict()["selected_on"], res.to_dataframe()["family"].tolist()
    ('validation', ['mass_mean'])
    >>> with tempfile.TemporaryDirectory() as d:
    ...     FamilySteeringResult.load(res.save(d)) == res
    True
    """

    families: dict[str, dict]
    baseline: dict
    n_validation: int
    n_test: int
    units: str
    scopes: list[str]
    alphas: dict[str, list[float]]
    n_random: int
    skipped: dict[str, str] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    result_name = "steering"
    json_digits = None
    figsize = (6.4, 4.0)

    def verdict(self, family: str) -> str:
        """ "better than random and unsteered" when both gains' CIs are above 0, else "not
        clearly better" (or "worse" when a gain's CI is below 0)."""
        t = self.families[family]["test"]
        lows = [t[g]["ci"][0] for g in ("gain_over_unsteered", "gain_over_random")]
        highs = [t[g]["ci"][1] for g in ("gain_over_unsteered", "gain_over_random")]
        if all(x is not None and x > 0 for x in lows):
            return "better than random directions and than no steering"
        if any(x is not None and x < 0 for x in highs):
            return "worse than random directions or than no steering"
        return "not clearly better than random directions and no steering"

    def conclusion(self) -> str:
        b = self.baseline
        lines = [
            f"Settings chosen on {self.n_validation} validation questions (from train), "
            f"evaluated once on {self.n_test} test questions; unsteered test accuracy "
            f"{_num(b.get('test_accuracy'))}{_ci(b.get('test_ci'))}."
        ]
        for name, fam in self.families.items():
            s, t = fam["selected"], fam["test"]
            where = f"layer {s['layer']}" if s.get("layer") is not None else f"top {s['k']} heads"
            r = t["random"]
            lines.append(
                f"{name} ({where}, alpha {s['alpha']:g} {self.units}, scope {s['scope']}): "
                f"accuracy {_num(t['accuracy'])}{_ci(t['ci'])} vs random "
                f"{_num(r['accuracy_mean'])} (n={r['n']}); gain over unsteered "
                f"{_num(t['gain_over_unsteered']['value'], True)}"
                f"{_ci(t['gain_over_unsteered']['ci'])}, over random "
                f"{_num(t['gain_over_random']['value'], True)}{_ci(t['gain_over_random']['ci'])}: "
                f"{self.verdict(name)}."
            )
        for name, why in self.skipped.items():
            lines.append(f"{name}: skipped ({why}).")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "selected_on": "validation",
            "families": self.families,
            "baseline": self.baseline,
            "n_validation": self.n_validation,
            "n_test": self.n_test,
            "units": self.units,
            "scopes": self.scopes,
            "alphas": self.alphas,
            "n_random": self.n_random,
            "skipped": self.skipped,
            "conclusion": self.conclusion(),
            **self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict) -> FamilySteeringResult:
        meta = {k: v for k, v in d.items() if k not in _FIELDS}
        return cls(
            d["families"],
            d["baseline"],
            d["n_validation"],
            d["n_test"],
            d["units"],
            d["scopes"],
            d["alphas"],
            d["n_random"],
            d.get("skipped", {}),
            meta,
        )

    def to_dataframe(self):
        """One row per family: the chosen setting and its test numbers."""
        import pandas as pd

        rows = []
        for name, fam in self.families.items():
            s, t = fam["selected"], fam["test"]
            r = t["random"]
            rows.append(
                {
                    "family": name,
                    "layer": s.get("layer"),
                    "k": s.get("k"),
                    "alpha": s["alpha"],
                    "push_norm": s.get("push_norm"),
                    "scope": s["scope"],
                    "validation_accuracy": s["validation_accuracy"],
                    "accuracy": t["accuracy"],
                    "ci_low": t["ci"][0],
                    "ci_high": t["ci"][1],
                    "recovery_rate": t["recovery_rate"],
                    "break_rate": t["break_rate"],
                    "random_accuracy_mean": r["accuracy_mean"],
                    "random_accuracy_sd": r["accuracy_sd"],
                    "gain_over_unsteered": t["gain_over_unsteered"]["value"],
                    "gain_over_random": t["gain_over_random"]["value"],
                }
            )
        return pd.DataFrame(rows)

    def markdown_frame(self):
        """The chosen settings and their test numbers, CIs in brackets."""
        import pandas as pd

        rows = []
        for name, fam in self.families.items():
            s, t = fam["selected"], fam["test"]
            r = t["random"]
            sd = f" +- {r['accuracy_sd']:.3f}" if r.get("accuracy_sd") is not None else ""
            rows.append(
                {
                    "family": name,
                    "where": f"layer {s['layer']}" if s.get("layer") is not None else f"k={s['k']}",
                    "alpha": f"{s['alpha']:g}",
                    "push norm": _num(s.get("push_norm")),
                    "scope": s["scope"],
                    "validation acc": _num(s["validation_accuracy"]),
                    "test acc": _num(t["accuracy"]) + _ci(t["ci"]),
                    "recovery": _num(t["recovery_rate"]) + _ci(t["recovery_ci"]),
                    "break": _num(t["break_rate"]) + _ci(t["break_ci"]),
                    f"random acc (n={r['n']})": _num(r["accuracy_mean"]) + sd,
                    "gain vs unsteered": _num(t["gain_over_unsteered"]["value"], True)
                    + _ci(t["gain_over_unsteered"]["ci"]),
                    "gain vs random": _num(t["gain_over_random"]["value"], True)
                    + _ci(t["gain_over_random"]["ci"]),
                }
            )
        return pd.DataFrame(rows)

    def markdown_notes(self) -> str:
        alphas = "; ".join(f"{f}: {', '.join(f'{a:g}' for a in g)}" for f, g in self.alphas.items())
        return "\n".join(
            [
                f"Alpha grids ({self.units}): {alphas}. Scopes tried: {', '.join(self.scopes)}.",
                "",
                *self.conclusion().split("\n"),
                "",
                "![steering](steering.png)",
                "",
            ]
        )

    def title(self) -> str:
        return f"Steering families (chosen on validation): {self.meta.get('model', {}).get('name', '')}"

    def plot(self, ax=None):
        """Test accuracy per family with its CI, against its random directions (mean +- SD)
        and the unsteered accuracy (dashed, with its CI)."""
        ax = pyplot_axes(ax, self.figsize)
        names = list(self.families)
        b = self.baseline
        if b.get("test_ci") and b["test_ci"][0] is not None:
            ax.axhspan(*b["test_ci"], color="k", alpha=0.08, label="unsteered 95% CI")
        if b.get("test_accuracy") is not None:
            ax.axhline(b["test_accuracy"], color="k", ls="--", lw=1, label="unsteered")
        for i, name in enumerate(names):
            t = self.families[name]["test"]
            r = t["random"]
            if r["accuracy_mean"] is not None:
                sd = r["accuracy_sd"] or 0.0
                ax.bar(
                    i,
                    2 * sd if sd else 0.01,
                    bottom=r["accuracy_mean"] - sd if sd else r["accuracy_mean"] - 0.005,
                    width=0.5,
                    color="tab:gray",
                    alpha=0.35,
                    label="random (mean +- SD)" if i == 0 else None,
                )
            lo, hi = t["ci"]
            err = None if lo is None else [[t["accuracy"] - lo], [hi - t["accuracy"]]]
            ax.errorbar(
                i,
                t["accuracy"],
                yerr=err,
                fmt="o",
                color="tab:blue",
                capsize=4,
                label="steered (95% CI)" if i == 0 else None,
            )
        ax.set_xticks(range(len(names)), names)
        ax.set_xlim(-0.6, max(len(names), 1) - 0.4)
        ax.set_ylabel(f"test accuracy (n = {self.n_test})")
        ax.set_title("Steering families: setting chosen on validation, tested once")
        ax.legend(fontsize=8)
        return ax
