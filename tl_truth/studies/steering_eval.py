"""Steering evaluation: does adding a probe direction turn wrong answers into right ones?

For every (layer, alpha) we regenerate the held-out answers with the probe direction added to
the residual stream, grade them, and compare with the unsteered answers: accuracy, recovery
rate (wrong -> right), break rate (right -> wrong), and the shift of the probe's own score.
The same is done for random directions of matched norm: a probe direction only "works" if it
beats those.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from tl_truth.answers.generation import GenerationConfig
from tl_truth.answers.run import answer_questions
from tl_truth.data.questions import QADataset
from tl_truth.intervention.directions import Direction, random_like
from tl_truth.intervention.steering import steer
from tl_truth.probing.probe import Probe
from tl_truth.probing.scoring import score_records
from tl_truth.results import Result, pyplot_axes
from tl_truth.studies.main_report import fmt_value


def _rates(base: np.ndarray, new: np.ndarray) -> dict:
    wrong, right = ~base, base
    return {
        "accuracy": float(new.mean()),
        "recovery_rate": float(new[wrong].mean()) if wrong.any() else None,
        "break_rate": float((~new[right]).mean()) if right.any() else None,
    }


def _mean_score(model: Any, probe: Probe, records: list[dict]) -> float | None:
    s = score_records(model, probe, records)
    s = s[~torch.isnan(s)]
    return float(s.mean()) if len(s) else None


@dataclass
class SteeringResult(Result):
    """Accuracy, recovery and break rates per (layer, alpha), against random directions.

    The result protocol (`tl_truth.results.Result`): `save(dir)` writes `steering.json`, `.md`
    and `.png` (values at full precision); `SteeringResult.load(dir)` reads it back.

    Attributes:
        baseline_accuracy: the unsteered accuracy.
        n_questions: held-out questions answered per setting.
        settings: one dict per (layer, alpha): `accuracy`, `recovery_rate`, `break_rate`,
            `probe_score_shift`, the `random` directions' means, `net_gain_over_random`.
        scope: which tokens were pushed.
        units: the alphas' units ("sd" or "abs").
        meta: the model, the dataset, the probe's position.

    >>> import tempfile
    >>> setting = {
    ...     "layer": 1, "hook": "blocks.1.hook_resid_post", "alpha": 4.0, "scope": "all",
    ...     "accuracy": 0.6, "recovery_rate": 0.5, "break_rate": 0.1, "probe_score_shift": 0.3,
    ...     "random": {"n": 2, "accuracy_mean": 0.4, "accuracy_sd": 0.05,
    ...                "recovery_rate_mean": 0.2, "break_rate_mean": 0.2},
    ...     "net_gain_over_random": 0.2}
    >>> res = SteeringResult(0.4, 10, [setting], scope="all", units="sd")
    >>> res.best["alpha"], res.conclusion().startswith("The probe direction is better")
    (4.0, True)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     SteeringResult.load(res.save(d)) == res
    True
    """

    baseline_accuracy: float
    n_questions: int
    settings: list[dict]
    scope: str
    units: str
    meta: dict = field(default_factory=dict)

    result_name = "steering"
    json_digits = None  # steering.json has always held full precision
    figsize = (6.0, 4.0)

    @property
    def best(self) -> dict | None:
        """The setting with the largest gain in accuracy over its random-direction control."""
        return max(self.settings, key=lambda s: s["net_gain_over_random"], default=None)

    def conclusion(self) -> str:
        b = self.best
        if b is None:
            return "No steering setting was evaluated."
        r = b["random"]
        sd = r["accuracy_sd"] or 0.0
        beats = b["net_gain_over_random"] > 2 * sd and b["accuracy"] > self.baseline_accuracy
        verdict = "better than" if beats else "not clearly better than"
        return (
            f"The {_family(b)} direction is {verdict} random directions: best setting layer "
            f"{b['layer']}, alpha {b['alpha']} ({self.units}) gives accuracy {b['accuracy']:.3f} "
            f"vs {r['accuracy_mean']:.3f} +- {sd:.3f} (mean +- SD over {r['n']} random "
            f"directions) and {self.baseline_accuracy:.3f} unsteered, on {self.n_questions} "
            f"held-out questions (recovery {fmt_value(b['recovery_rate'])}, break "
            f"{fmt_value(b['break_rate'])})."
        )

    def to_dict(self) -> dict:
        return {
            "baseline_accuracy": self.baseline_accuracy,
            "n_questions": self.n_questions,
            "scope": self.scope,
            "units": self.units,
            "settings": self.settings,
            "best": self.best,
            "conclusion": self.conclusion(),
            **self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict) -> SteeringResult:
        meta = {k: v for k, v in d.items() if k not in _FIELDS}
        return cls(
            d["baseline_accuracy"], d["n_questions"], d["settings"], d["scope"], d["units"], meta
        )

    def to_dataframe(self):
        import pandas as pd

        rows = []
        for s in self.settings:
            row = {k: v for k, v in s.items() if k != "random"}
            row.update({f"random_{k}": v for k, v in s["random"].items()})
            rows.append(row)
        return pd.DataFrame(rows)

    def plot(self, ax=None):
        """Accuracy against alpha per layer, with the band of the random directions."""
        df = self.to_dataframe()
        ax = pyplot_axes(ax, self.figsize)
        for layer, g in df.groupby("layer") if len(df) else []:
            g = g.sort_values("alpha")
            (line,) = ax.plot(g["alpha"], g["accuracy"], marker="o", label=f"layer {layer}")
            lo = g["random_accuracy_mean"].astype(float) - g["random_accuracy_sd"].astype(
                float
            ).fillna(0)
            hi = g["random_accuracy_mean"].astype(float) + g["random_accuracy_sd"].astype(
                float
            ).fillna(0)
            ax.fill_between(g["alpha"], lo, hi, color=line.get_color(), alpha=0.15)
        ax.axhline(self.baseline_accuracy, color="k", ls="--", lw=1, label="unsteered")
        ax.set_xlabel(f"alpha ({self.units})")
        ax.set_ylabel("accuracy")
        family = _family(self.settings[0]) if self.settings else "probe"
        ax.set_title(f"Steering along the {family} direction (bands: random directions, +-1 SD)")
        ax.legend(fontsize=8)
        return ax

    def title(self) -> str:
        return f"Steering: {self.meta.get('model', {}).get('name', '')}"

    def markdown_frame(self):
        """One row per (layer, alpha): the probe direction and its random controls."""
        df = self.to_dataframe()
        cols = {
            "layer": "layer",
            "alpha": "alpha",
            "accuracy": "accuracy",
            "recovery_rate": "recovery",
            "break_rate": "break",
            "probe_score_shift": "probe score shift",
            "random_accuracy_mean": "random acc (mean)",
            "random_accuracy_sd": "random acc (SD)",
            "random_recovery_rate_mean": "random recovery",
            "random_break_rate_mean": "random break",
        }
        df = df.reindex(columns=list(cols)).rename(columns=cols)
        df["alpha"] = df["alpha"].map(lambda a: f"{a:g}", na_action="ignore")
        return df

    def markdown_notes(self) -> str:
        return "\n".join(
            [
                f"{self.n_questions} held-out questions, scope `{self.scope}`, alpha in "
                f"{self.units}, unsteered accuracy {self.baseline_accuracy:.3f}.",
                "",
                self.conclusion(),
                "",
                "![steering](steering.png)",
                "",
            ]
        )


_FIELDS = (
    "baseline_accuracy",
    "n_questions",
    "scope",
    "units",
    "settings",
    "best",
    "conclusion",
)


def _family(setting: dict) -> str:
    """How a setting's direction is named in text: "mass-mean" or "probe"."""
    return "mass-mean" if setting.get("direction") == "mass_mean" else "probe"


def steering_sweep(
    model: Any,
    dataset: QADataset,
    probes: dict[int, tuple[Probe, Direction]],
    alphas: list[float],
    scope: str = "all",
    units: str = "sd",
    n_random: int = 5,
    config: GenerationConfig | None = None,
    seed: int = 0,
    progress: bool = True,
) -> SteeringResult:
    """Sweep layers x alphas: steer along each probe's direction and along random ones.

    Args:
        model: a HookedTransformer or TransformerBridge.
        dataset: the held-out questions to answer.
        probes: layer -> (probe, its direction at that layer).
        alphas: steering strengths.
        scope: which tokens are pushed (`all`, `prompt`, `last_prompt`, `generated`).
        units: "sd" (alphas in SDs of the activations' projection) or "abs".
        n_random: norm-matched random directions per setting.
        config: generation settings (default: greedy, 24 new tokens).
        seed: the random directions' seed.
        progress: show a progress bar.

    Returns:
        The `SteeringResult`, one setting per (layer, alpha).

    On a tiny random model (it answers nothing right, so the rates are trivial):

    >>> import torch
    >>> import tl_truth as tt
    >>> from tl_truth.testing import tiny_model
    >>> model = tiny_model("llama")
    >>> x, y = torch.randn(20, model.cfg.d_model), torch.arange(20) % 2
    >>> probe = tt.Probe.from_data(x, y, hook="blocks.1.hook_resid_post", position="last_prompt")
    >>> qs = [tt.make_question("1", "What is 1 + 1?", "2", "sums", "math")]
    >>> res = steering_sweep(model, tt.QADataset("sums", qs), {1: (probe, tt.from_probe(probe, x))},
    ...                      alphas=[4.0], n_random=1, config=tt.GenerationConfig(max_new_tokens=2),
    ...                      progress=False)
    >>> [(s["layer"], s["alpha"], s["random"]["n"]) for s in res.settings], res.n_questions
    ([(1, 4.0, 1)], 1)
    """
    config = config or GenerationConfig(max_new_tokens=24)

    def answer() -> list[dict]:
        run = answer_questions(model, dataset, config, extract_with_model=False, progress=False)
        return run.records

    base_records = answer()
    base = np.array([r["correct"] for r in base_records])
    settings = []
    total = len(probes) * len(alphas) * (1 + n_random)
    bar = tqdm(total=total, desc="steer", disable=not progress)
    for layer, (probe, direction) in sorted(probes.items()):
        # The probe reads its cell in a plain forward pass, where only the "all" scope is
        # defined without per-row prompt lengths: the score shift is reported for that scope.
        measure = scope == "all"
        base_score = _mean_score(model, probe, base_records) if measure else None
        randoms = random_like(direction, n_random, seed=seed)
        for alpha in alphas:
            with steer(model, direction, alpha=alpha, units=units, scope=scope):
                recs = answer()
                score = _mean_score(model, probe, recs) if measure else None
            bar.update(1)
            new = np.array([r["correct"] for r in recs])
            rand = []
            for rd in randoms:
                with steer(model, rd, alpha=alpha, units=units, scope=scope):
                    rr = np.array([r["correct"] for r in answer()])
                rand.append(_rates(base, rr))
                bar.update(1)
            acc = [x["accuracy"] for x in rand]
            setting = {
                "layer": layer,
                "hook": direction.hook,
                "direction": direction.source,
                "alpha": alpha,
                "scope": scope,
                **_rates(base, new),
                "probe_score_shift": None
                if score is None or base_score is None
                else score - base_score,
                "random": {
                    "n": len(rand),
                    "accuracy_mean": float(np.mean(acc)) if acc else None,
                    "accuracy_sd": float(np.std(acc, ddof=1)) if len(acc) > 1 else None,
                    "recovery_rate_mean": _nanmean([x["recovery_rate"] for x in rand]),
                    "break_rate_mean": _nanmean([x["break_rate"] for x in rand]),
                },
            }
            ref = setting["random"]["accuracy_mean"]
            setting["net_gain_over_random"] = setting["accuracy"] - (
                ref if ref is not None else float(base.mean())
            )
            settings.append(setting)
    bar.close()
    return SteeringResult(float(base.mean()), len(base), settings, scope, units)


def _nanmean(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None
