"""Steering families on held-out data: settings chosen on validation, evaluated once on test.

Each family of directions (the probe's weight vector, the mass-mean shift, contrastive pairs,
ITI's attention heads) offers candidates: a direction at a layer, or the top k heads. For every
family, every (candidate, scope, alpha) is tried on a validation split carved from the TRAIN
questions (never the test ones), and the setting with the highest validation accuracy is kept
(ties: the smaller |alpha|, then the first in the order given). Only then are the test
questions answered: unsteered, with the chosen setting, and with `n_random` random directions
of matched norm at that same setting. Test answers are never read before every family's
choice is made (`select_and_test` answers the validation questions for all families first).

Reported per family, with bootstrap CIs paired over test questions (the same resampled
questions for every quantity): accuracy, recovery rate (wrong unsteered -> right), break rate
(right -> wrong), and the gains over the unsteered answers and over the random directions' mean.

Alpha grids (`family_alphas`). In "sd" units (standard deviations of the projection onto the
direction) one number means different pushes for different families: on SmolLM2 the
mass-mean direction's projection SD is ~18x the probe's (the probe's normal points where
the classes are narrow), so the default grids differ per family (`DEFAULT_SD_ALPHAS`): the
probe's reaches 64 SD so that it covers the absolute norms of 1-4 SD of the mass-mean shift,
and the heads' follows ITI (alpha 15 on LLaMA-7B). In "abs" units every family gets the same
grid of absolute norms (for heads: the norm of the summed push into the residual stream), so
the families are compared at matched absolute norm; its default (`abs_alphas`) is 1, 2, 4 and
8 times the mass-mean shift's projection SD at the first steered layer, the same range in norm
as the mass-mean's default SD grid. Given alphas replace these defaults (for every family, or
per family). Every setting tried records `push_norm`, the Euclidean norm of what it adds to the
residual stream, so settings in "sd" units can be compared at matched absolute norm too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from tl_truth.data.questions import QADataset
from tl_truth.intervention.directions import Direction, Units, random_like
from tl_truth.intervention.heads import HeadDirections
from tl_truth.intervention.steering import Steering
from tl_truth.studies.steering_protocol_result import FamilySteeringResult

FAMILIES = ("probe", "mass_mean", "contrastive", "heads")
DEFAULT_SD_ALPHAS: dict[str, tuple[float, ...]] = {
    "probe": (4.0, 16.0, 64.0),
    "mass_mean": (1.0, 2.0, 4.0, 8.0),
    "contrastive": (1.0, 2.0, 4.0, 8.0),
    "heads": (5.0, 10.0, 15.0),
}
ABS_MULTIPLES = (1.0, 2.0, 4.0, 8.0)


def abs_alphas(reference: Direction) -> tuple[float, ...]:
    """The default "abs" grid: 1, 2, 4, 8 x `reference`'s projection SD (3 significant digits).

    >>> import torch
    >>> abs_alphas(Direction(torch.ones(2), projection_std=1.23456))
    (1.23, 2.47, 4.94, 9.88)
    """
    return tuple(float(f"{m * reference.projection_std:.3g}") for m in ABS_MULTIPLES)


@dataclass
class Candidate:
    """One family at one place: a residual `direction` (at `layer`) or the top `k` `heads`.

    >>> import torch
    >>> d = Direction(torch.ones(32), hook="blocks.1.hook_resid_post", layer=1, projection_std=2.0)
    >>> c = Candidate("mass_mean", layer=1, direction=d)
    >>> c.describe()["hook"], round(c.steering(None, 3.0, "sd", "all").vectors[0][1].norm().item(), 3)
    ('blocks.1.hook_resid_post', 6.0)
    """

    family: str
    layer: int | None = None
    direction: Direction | None = None
    heads: HeadDirections | None = None
    k: int | None = None

    def __post_init__(self) -> None:
        if (self.direction is None) == (self.heads is None and self.k is None):
            raise ValueError("a candidate is either a direction or k heads")

    def steering(self, model: Any, alpha: float, units: Units, scope: str) -> Steering:
        """The push along this candidate at `alpha` (model: for the heads' W_O)."""
        if self.direction is not None:
            return Steering([(self.direction.hook, self.direction.scaled(alpha, units))], scope)
        return self.heads.steering(model, self.k, alpha, units, scope)

    def control(
        self, model: Any, alpha: float, units: Units, scope: str, i: int, seed: int
    ) -> Steering:
        """The i-th norm-matched random control of `steering(...)` (the same whatever i's peers)."""
        if self.direction is not None:
            rd = random_like(self.direction, i + 1, seed=seed)[i]
            return Steering([(rd.hook, rd.scaled(alpha, units))], scope)
        return self.heads.controls(model, self.k, alpha, units, scope, n=i + 1, seed=seed)[i]

    def push_norm(self, model: Any, alpha: float, units: Units) -> float:
        """The Euclidean norm of what `steering(...)` adds to the residual stream (for heads:
        their W_O images summed), to compare families at matched absolute norm."""
        if self.direction is not None:
            return float(self.direction.scaled(alpha, units).norm())
        return self.heads.push_norm(model, self.k, alpha, units)

    def describe(self) -> dict:
        """Where it acts: layer and hook, or k and the heads (JSON-ready)."""
        if self.direction is not None:
            d = self.direction
            return {"layer": self.layer, "hook": d.hook, "projection_std": d.projection_std}
        top = self.heads.top(self.k)
        return {
            "layer": None,
            "k": self.k,
            "heads": [[h.layer, h.head] for h in top],
            "head_accuracy": [h.accuracy for h in top],
        }


@dataclass(frozen=True)
class Setting:
    """A candidate at one (alpha, scope); `control` is the index of a random control or None."""

    candidate: Candidate
    alpha: float
    scope: str
    units: Units = "sd"
    control: int | None = None
    seed: int = 0


# (questions, setting or None for unsteered) -> per-question correctness, in order
AnswerFn = Callable[[QADataset, Setting | None], Sequence[bool]]


def generation_answer(
    model: Any, answer_questions_fn: Callable[[QADataset], list[dict]]
) -> AnswerFn:
    """The real `AnswerFn`: answer the questions (greedy) with the setting's steering applied.

    Args:
        model: the model steered.
        answer_questions_fn: questions -> graded records (e.g. `answer_questions` with the
            generation config and prompt format bound).

    Returns:
        An `AnswerFn` for `select_and_test`.

    >>> import torch
    >>> from tl_truth.answers.run import answer_questions
    >>> from tl_truth.data.questions import make_question
    >>> from tl_truth.testing import tiny_model
    >>> model = tiny_model("llama")
    >>> qs = QADataset("d", [make_question("1", "What is 1 + 1?", "2", "t", "t")])
    >>> answer = generation_answer(model, lambda q: answer_questions(
    ...     model, q, extract_with_model=False, progress=False).records)
    >>> d = Direction(torch.ones(32), hook="blocks.1.hook_resid_post", layer=1)
    >>> answer(qs, None), answer(qs, Setting(Candidate("probe", 1, d), alpha=4.0, scope="all"))
    ([False], [False])
    """

    def answer(questions: QADataset, setting: Setting | None) -> list[bool]:
        if setting is None:
            return [bool(r["correct"]) for r in answer_questions_fn(questions)]
        c = setting.candidate
        if setting.control is None:
            steering = c.steering(model, setting.alpha, setting.units, setting.scope)
        else:
            steering = c.control(
                model, setting.alpha, setting.units, setting.scope, setting.control, setting.seed
            )
        with steering.apply(model):
            return [bool(r["correct"]) for r in answer_questions_fn(questions)]

    return answer


def choose(rows: Sequence[dict]) -> int:
    """Index of the setting with the best `validation_accuracy` (ties: smaller |alpha|, then first).

    >>> choose([{"alpha": 4, "validation_accuracy": 0.5}, {"alpha": -2, "validation_accuracy": 0.5},
    ...         {"alpha": 2, "validation_accuracy": 0.5}, {"alpha": 8, "validation_accuracy": 0.4}])
    1
    """
    if not rows:
        raise ValueError("no settings to choose from")
    return max(
        range(len(rows)),
        key=lambda i: (rows[i]["validation_accuracy"], -abs(rows[i]["alpha"]), -i),
    )


def _mean_ci(boots: np.ndarray) -> list[float | None]:
    boots = boots[~np.isnan(boots)]
    if not len(boots):
        return [None, None]
    return [float(np.quantile(boots, q)) for q in (0.025, 0.975)]


def paired_bootstrap(
    base: Sequence[bool],
    new: Sequence[bool],
    controls: Sequence[Sequence[bool]],
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """Test statistics of one steered setting with percentile CIs, paired over questions.

    Every quantity is recomputed on the same resampled questions: accuracy, recovery rate
    (right among the questions wrong unsteered), break rate (wrong among those right
    unsteered), the gain over unsteered and the gain over the random controls' mean (both per
    question, then averaged).

    Args:
        base: [n] unsteered correctness.
        new: [n] steered correctness.
        controls: [n_random][n] correctness under each random control (may be empty).
        n_boot: bootstrap resamples.
        seed: their seed.

    Returns:
        The `test` block of `steering.json` (see `FamilySteeringResult`).

    >>> out = paired_bootstrap([0, 0, 1, 1], [1, 0, 1, 1], [[0, 0, 1, 0]], n_boot=200)
    >>> out["accuracy"], out["recovery_rate"], out["break_rate"], out["gain_over_random"]["value"]
    (0.75, 0.5, 0.0, 0.5)
    """
    b = np.asarray(base, dtype=bool)
    s = np.asarray(new, dtype=bool)
    r = np.asarray(controls, dtype=bool).reshape(-1, len(b))
    n = len(b)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n)) if n else np.zeros((n_boot, 0), dtype=int)

    def ratio(num: np.ndarray, den: np.ndarray) -> tuple[float | None, list]:
        value = float(num.sum() / den.sum()) if den.any() else None
        with np.errstate(invalid="ignore", divide="ignore"):
            boots = num[idx].sum(1) / den[idx].sum(1)
        return value, _mean_ci(boots.astype(float))

    def mean(v: np.ndarray) -> dict:
        return {
            "value": float(v.mean()) if n else None,
            "ci": _mean_ci(v[idx].mean(1)) if n else [None, None],
        }

    acc = mean(s.astype(float))
    recovery, recovery_ci = ratio(s & ~b, ~b)
    broke, break_ci = ratio(~s & b, b)
    out = {
        "n": n,
        "accuracy": acc["value"],
        "ci": acc["ci"],
        "recovery_rate": recovery,
        "recovery_ci": recovery_ci,
        "n_wrong_unsteered": int((~b).sum()),
        "break_rate": broke,
        "break_ci": break_ci,
        "n_right_unsteered": int(b.sum()),
        "gain_over_unsteered": mean(s.astype(float) - b),
    }
    accs = r.mean(1) if len(r) else np.array([])
    rec = [float((x & ~b).sum() / (~b).sum()) for x in r] if (~b).any() else []
    brk = [float((~x & b).sum() / b.sum()) for x in r] if b.any() else []
    out["random"] = {
        "n": len(r),
        "accuracy_mean": float(accs.mean()) if len(r) else None,
        "accuracy_sd": float(accs.std(ddof=1)) if len(r) > 1 else None,
        "accuracy_ci": mean(r.mean(0))["ci"] if len(r) else [None, None],
        "recovery_rate_mean": float(np.mean(rec)) if rec else None,
        "break_rate_mean": float(np.mean(brk)) if brk else None,
    }
    out["gain_over_random"] = mean(s - r.mean(0)) if len(r) else {"value": None, "ci": [None, None]}
    return out


def select_and_test(
    model: Any,
    candidates: dict[str, list[Candidate]],
    validation: QADataset,
    test: QADataset,
    answer: AnswerFn,
    alphas: dict[str, Sequence[float]],
    scopes: Sequence[str] = ("all",),
    units: Units = "sd",
    n_random: int = 5,
    n_boot: int = 1000,
    seed: int = 0,
    skipped: dict[str, str] | None = None,
    progress: bool = True,
) -> FamilySteeringResult:
    """Choose each family's (candidate, scope, alpha) on `validation`; evaluate it once on `test`.

    All validation answers (every family) come before the first test answer.

    Args:
        model: the model (passed on to the candidates; unused by a stub `answer`).
        candidates: family -> its candidates (layers, or k heads).
        validation: questions carved from train (not used to fit the directions).
        test: the held-out test questions.
        answer: `(questions, setting | None) -> correctness` (`generation_answer`).
        alphas: family -> its alpha grid.
        scopes: the scopes tried.
        units: "sd" or "abs".
        n_random: random controls at each chosen setting.
        n_boot: bootstrap resamples.
        seed: the random controls' and the bootstrap's seed.
        skipped: family -> why it has no candidates (kept in the result).
        progress: show a progress bar.

    Returns:
        The `FamilySteeringResult`.

    On a stub answer function: mass-mean at alpha 2 is best on validation.

    >>> import torch
    >>> from tl_truth.data.questions import make_question
    >>> qs = QADataset("d", [make_question(str(i), "q?", "a", "t", "t") for i in range(8)])
    >>> d = Direction(torch.ones(4), hook="blocks.0.hook_resid_post", layer=0)
    >>> acc = {None: 0.5, 2.0: 0.75, 4.0: 0.25}
    >>> def stub(questions, s):
    ...     a = acc[None] if s is None or s.control is not None else acc[s.alpha]
    ...     return [i < a * len(questions) for i in range(len(questions))]
    >>> res = select_and_test(None, {"mass_mean": [Candidate("mass_mean", 0, d)]}, qs, qs, stub,
    ...                       {"mass_mean": [4.0, 2.0]}, n_random=2, n_boot=50, progress=False)
    >>> sel = res.families["mass_mean"]["selected"]
    >>> sel["alpha"], sel["validation_accuracy"], res.families["mass_mean"]["test"]["accuracy"]
    (2.0, 0.75, 0.75)
    """
    if not len(validation) or not len(test):
        raise ValueError(
            f"need validation and test questions, got {len(validation)} and {len(test)}"
        )
    total_val = sum(len(c) * len(scopes) * len(alphas[f]) for f, c in candidates.items() if c)
    bar = tqdm(total=1 + total_val, desc="validation", disable=not progress)
    base_val = np.asarray(answer(validation, None), dtype=bool)
    bar.update(1)
    families: dict[str, dict] = {}
    for family, cands in candidates.items():
        rows = []
        settings = []
        for cand in cands:
            for scope in scopes:
                for alpha in alphas[family]:
                    setting = Setting(cand, float(alpha), scope, units, seed=seed)
                    acc = float(np.mean(answer(validation, setting)))
                    bar.update(1)
                    rows.append(
                        {
                            **cand.describe(),
                            "alpha": float(alpha),
                            "push_norm": cand.push_norm(model, float(alpha), units),
                            "scope": scope,
                            "validation_accuracy": acc,
                            "validation_gain": acc - float(base_val.mean()),
                        }
                    )
                    settings.append(setting)
        if rows:
            best = choose(rows)
            families[family] = {
                "selected": dict(rows[best]),
                "validation": rows,
                "_setting": settings[best],
            }
    bar.close()
    # Only now are the test questions answered: every choice above is final.
    bar = tqdm(total=1 + len(families) * (1 + n_random), desc="test", disable=not progress)
    base_test = np.asarray(answer(test, None), dtype=bool)
    bar.update(1)
    for block in families.values():
        chosen = block.pop("_setting")
        new = answer(test, chosen)
        bar.update(1)
        controls = []
        for i in range(n_random):
            controls.append(
                answer(test, Setting(chosen.candidate, chosen.alpha, chosen.scope, units, i, seed))
            )
            bar.update(1)
        block["test"] = paired_bootstrap(base_test, new, controls, n_boot, seed)
    bar.close()
    plain = paired_bootstrap(base_test, base_test, [], n_boot, seed)
    baseline = {
        "validation_accuracy": float(base_val.mean()),
        "test_accuracy": plain["accuracy"],
        "test_ci": plain["ci"],
    }
    return FamilySteeringResult(
        families=families,
        baseline=baseline,
        n_validation=len(validation),
        n_test=len(test),
        units=units,
        scopes=list(scopes),
        alphas={f: [float(a) for a in alphas[f]] for f in candidates},
        n_random=n_random,
        skipped=dict(skipped or {}),
    )
