"""Controls: is a probe's AUC "the model knows it is wrong", or an artefact of the data?

A correctness probe at the exact-answer token can score well without reading any knowledge of
truth: with a closed answer vocabulary some answers are almost always right ("France") and
others almost always wrong, so *which answer it is* predicts correctness; pooled tasks differ in
accuracy, so *which task it is* does too; and the token's embedding already carries both. Each
control below scores the same test examples from one of these shortcuts alone:

* `answer_prior`: P(correct | normalised exact answer), counted on the train split
  (add-one smoothing toward the train accuracy; unseen answers get the train accuracy);
* `task_prior`: the train accuracy of the example's task (only when tasks are pooled);
* `embedding`: a probe at the same position on the token embedding (`hook_embed`), i.e. what
  token identity gives (fitted by the caller, passed in as scores);
* `unseen_answers`: every method on the test answers whose normalised exact answer never occurs
  in train, where an answer lookup cannot help;
* `within_answer`: every method's AUC over (right, wrong) test pairs that share the same
  normalised exact answer, with a bootstrap CI over answer groups: answer identity cannot
  separate any such pair;
* `beyond_artefacts`: the probe's AUC minus the best of the lookup / embedding controls, with a
  paired bootstrap CI on the same examples: the headline number.

All functions take plain arrays; `artefact_controls` assembles the report's `controls` block.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tl_truth.answers.grading import normalize
from tl_truth.probing.metrics import (
    bootstrap_auc_ci,
    paired_bootstrap_auc_diff,
    roc_auc,
    within_group_auc,
)

MIN_UNSEEN_PER_CLASS = 5  # below this many right or wrong unseen answers, the AUC is not given


def normalise_answer(text: str | None) -> str | None:
    """The key two exact answers must share to count as "the same answer" (None if absent).

    SQuAD-style: accents and case folded, punctuation and articles dropped.

    Args:
        text: an exact answer, or None.

    Returns:
        The normalised key, or None for a missing or empty answer.

    >>> normalise_answer("The U.S.A.") == normalise_answer("usa")
    True
    """
    if not isinstance(text, str):
        return None
    key = normalize(text)
    return key or None


def answer_prior(
    train_answers: Sequence[str | None],
    train_labels: Sequence[int],
    answers: Sequence[str | None],
    smoothing: float = 1.0,
) -> np.ndarray:
    """P(correct | answer) from the train split, for each of `answers`.

    `(k + smoothing * p0) / (n + smoothing)` where the answer occurs n times in train, k of them
    correct, and p0 is the train accuracy: an answer seen once moves halfway from p0. An
    answer never seen in train (or None) gets p0.

    Args:
        train_answers: the train examples' normalised exact answers (None: no answer).
        train_labels: their labels, 1 = correct.
        answers: the answers to score.
        smoothing: pseudo-counts pulling toward p0.

    Returns:
        One prior per answer.

    >>> answer_prior(["paris", "paris", "lyon"], [1, 1, 0], ["paris", "lyon", "rome", None])
    array([0.88888889, 0.33333333, 0.66666667, 0.66666667])
    """
    y = np.asarray(train_labels, dtype=float)
    keep = [a is not None for a in train_answers]
    p0 = float(y[keep].mean()) if any(keep) else 0.5
    n, k = Counter(), Counter()
    for a, label in zip(train_answers, y, strict=True):
        if a is not None:
            n[a] += 1
            k[a] += label
    return np.array(
        [(k[a] + smoothing * p0) / (n[a] + smoothing) if a is not None else p0 for a in answers]
    )


def task_prior(
    train_tasks: Sequence[str], train_labels: Sequence[int], tasks: Sequence[str]
) -> np.ndarray:
    """The train accuracy of each example's task (the overall train accuracy if unseen).

    Args:
        train_tasks: the train examples' tasks.
        train_labels: their labels, 1 = correct.
        tasks: the tasks to score.

    Returns:
        One accuracy per task in `tasks`.

    >>> task_prior(["a", "a", "b"], [1, 0, 0], ["a", "b", "c"])
    array([0.5       , 0.        , 0.33333333])
    """
    y = np.asarray(train_labels, dtype=float)
    p0 = float(y.mean()) if len(y) else 0.5
    acc = {t: float(y[[x == t for x in train_tasks]].mean()) for t in set(train_tasks)}
    return np.array([acc.get(t, p0) for t in tasks])


def _within_answer_ci(
    scores: Mapping[str, np.ndarray],
    labels: np.ndarray,
    groups: np.ndarray,
    n_boot: int,
    seed: int,
) -> dict[str, list[float | None]]:
    """Percentile bootstrap over answer groups of every method's within-answer AUC."""
    keys = [g for g in dict.fromkeys(groups.tolist()) if g is not None]
    # per group and method: (sum of pair wins, number of pairs); groups are the resampled unit
    per_group = {name: np.zeros((len(keys), 2)) for name in scores}
    usable = np.zeros(len(keys), dtype=bool)
    for j, key in enumerate(keys):
        at = groups == key
        for name, s in scores.items():
            sub = at & ~np.isnan(s)
            pos, neg = s[sub & (labels == 1)], s[sub & (labels == 0)]
            diff = pos[:, None] - neg[None, :]
            per_group[name][j] = ((diff > 0).sum() + 0.5 * (diff == 0).sum(), diff.size)
        usable[j] = any(per_group[name][j, 1] > 0 for name in scores)
    idx = np.flatnonzero(usable)
    out: dict[str, list[float | None]] = {name: [None, None] for name in scores}
    if len(idx) < 2 or n_boot <= 0:
        return out
    rng = np.random.default_rng(seed)
    draws = idx[rng.integers(0, len(idx), size=(n_boot, len(idx)))]
    for name, table in per_group.items():
        wins, pairs = table[draws, 0].sum(1), table[draws, 1].sum(1)
        aucs = np.where(pairs > 0, wins / np.maximum(pairs, 1), np.nan)
        if np.isnan(aucs).all():
            continue
        lo, hi = np.nanquantile(aucs, [0.025, 0.975])
        out[name] = [float(lo), float(hi)]
    return out


def _auc_with_ci(scores: np.ndarray, labels: np.ndarray, n_boot: int, seed: int) -> dict:
    keep = ~np.isnan(scores)
    auc = roc_auc(scores[keep], labels[keep]) if keep.any() else float("nan")
    ci = (
        list(bootstrap_auc_ci(scores[keep], labels[keep], n_boot=n_boot, seed=seed))
        if n_boot > 0 and not np.isnan(auc)
        else [None, None]
    )
    return {"auc": auc, "ci": ci, "n": int(keep.sum())}


def artefact_controls(
    labels: Sequence[int],
    train: Sequence[bool],
    evaluate: Sequence[bool],
    answers: Sequence[str | None],
    tasks: Sequence[str],
    methods: Mapping[str, np.ndarray],
    probe: str,
    embedding: Mapping[str, Any] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """Every answer-, task- and token-identity control for one probe, on the same examples.

    Args:
        labels: 1 = correct, per example (all examples, train and test).
        train: the examples the probe (and the lookup controls) may learn from.
        evaluate: the test examples to score: those where the probe has a score.
        answers: each example's normalised exact answer (`normalise_answer`), None if none.
        tasks: each example's task.
        methods: name -> score per example (higher = more likely correct; nan = no score),
            the probe under test among them; unseen / within-answer AUCs are given for each.
        probe: the key of the probe under test in `methods`.
        embedding: optional `{"hook", "position", "scores"}`: a probe on the token embedding.
        n_boot: bootstrap replicates for CIs (0: none).
        seed: bootstrap seed.

    Returns:
        `{"controls": {...}, "beyond_artefacts": {...}, "per_task": {...}}` as in report.json.

    Every answer below is right half the time, so the answer lookup is at chance and the
    probe's advantage survives within answers:

    >>> y = np.arange(20) % 2
    >>> out = artefact_controls(y, np.arange(20) < 12, np.arange(20) >= 12, ["a", "a", "b", "b"] * 5,
    ...                         ["t"] * 20, {"probe": y + np.linspace(0, 0.5, 20)}, "probe", n_boot=0)
    >>> out["controls"]["answer_prior"]["auc"], out["controls"]["within_answer"]["auc"]["probe"]
    (0.5, 1.0)
    >>> out["beyond_artefacts"]["against"], out["beyond_artefacts"]["auc_diff"]
    ('answer_prior', 0.5)
    """
    y = np.asarray(labels, dtype=int)
    train, ev = np.asarray(train, dtype=bool), np.asarray(evaluate, dtype=bool)
    answers = np.array(list(answers), dtype=object)
    tasks = np.array(list(tasks), dtype=object)
    methods = {k: np.asarray(v, dtype=float) for k, v in methods.items()}
    if probe not in methods:
        raise KeyError(f"probe {probe!r} is not among the methods {sorted(methods)}")
    ev = ev & ~np.isnan(methods[probe])

    tr = np.flatnonzero(train)
    lookups: dict[str, np.ndarray] = {
        "answer_prior": answer_prior(answers[tr].tolist(), y[tr], answers.tolist())
    }
    pooled = len(set(tasks[ev].tolist())) > 1
    if pooled:
        lookups["task_prior"] = task_prior(tasks[tr].tolist(), y[tr], tasks.tolist())
    controls: dict[str, Any] = {"task_prior": None}
    for name, s in lookups.items():
        s_ev = np.where(ev, s, np.nan)
        controls[name] = _auc_with_ci(s_ev[ev], y[ev], n_boot, seed)
    if embedding is not None:
        s_emb = np.where(ev, np.asarray(embedding["scores"], dtype=float), np.nan)
        lookups["embedding"] = s_emb
        controls["embedding"] = {
            "hook": embedding["hook"],
            "position": embedding["position"],
            **_auc_with_ci(s_emb[ev], y[ev], n_boot, seed),
        }
    else:
        controls["embedding"] = None

    everything = {**methods, **lookups}

    # answers never seen in train: a lookup has nothing to go on
    seen = set(answers[tr].tolist()) - {None}
    unseen = ev & np.array([a is not None and a not in seen for a in answers])
    n_c, n_i = int(y[unseen].sum()), int((1 - y[unseen]).sum())
    big_enough = min(n_c, n_i) >= MIN_UNSEEN_PER_CLASS
    controls["unseen_answers"] = {
        "n": int(unseen.sum()),
        "n_correct": n_c,
        "n_incorrect": n_i,
        "auc": {
            k: (roc_auc(v[unseen], y[unseen]) if big_enough else None)
            for k, v in everything.items()
            if k != "answer_prior"  # constant (the train accuracy) on unseen answers
        },
        "note": None
        if big_enough
        else f"fewer than {MIN_UNSEEN_PER_CLASS} right or wrong unseen answers: no AUC",
    }

    # pairs of a right and a wrong answer naming the same exact answer
    groups = np.where(ev, answers, None)
    within = {
        k: within_group_auc(np.where(ev, v, np.nan), y, groups) for k, v in everything.items()
    }
    n_pairs, n_groups = within[probe][1], within[probe][2]
    controls["within_answer"] = {
        "n_pairs": n_pairs,
        "n_groups": n_groups,
        "auc": {k: v[0] if v[1] else None for k, v in within.items()},
        "ci": _within_answer_ci(
            {k: np.where(ev, v, np.nan) for k, v in everything.items()}, y, groups, n_boot, seed
        ),
    }

    # the headline: the probe minus the strongest shortcut, paired on the same examples
    probe_auc = roc_auc(methods[probe][ev], y[ev])
    shortcut_aucs = {
        k: roc_auc(v[ev], y[ev]) for k, v in lookups.items() if not np.isnan(v[ev]).any()
    }
    against = max(shortcut_aucs, key=lambda k: shortcut_aucs[k]) if shortcut_aucs else None
    beyond: dict[str, Any] = {
        "probe": probe,
        "auc": probe_auc,
        "against": against,
        "against_auc": shortcut_aucs.get(against) if against else None,
        "auc_diff": None,
        "ci": [None, None],
        "within_answer_auc": controls["within_answer"]["auc"][probe],
        "within_answer_ci": controls["within_answer"]["ci"][probe],
        "n": int(ev.sum()),
    }
    if against is not None:
        diff, ci = paired_bootstrap_auc_diff(
            methods[probe][ev], lookups[against][ev], y[ev], n_boot=max(n_boot, 1), seed=seed
        )
        beyond["auc_diff"] = diff
        beyond["ci"] = list(ci) if n_boot > 0 else [None, None]

    per_task = {}
    for t in dict.fromkeys(tasks[ev].tolist()):
        at = ev & (tasks == t)
        per_task[t] = {
            "n": int(at.sum()),
            "accuracy": float(y[at].mean()),
            "auc": {k: roc_auc(v[at], y[at]) for k, v in everything.items()},
        }
    return {"controls": controls, "beyond_artefacts": beyond, "per_task": per_task}
