"""The main job's controls: how much of the selected probe's AUC is beyond its artefacts.

`artefact_report` gathers, on the test examples the selected exact-answer probe can score:
every answer-, task- and token-identity control (`tl_truth.probing.controls`), a permutation
null that re-selects the cell (`tl_truth.probing.permutation`), the rejection metrics (PRR,
accuracy at 80% coverage, the risk-coverage curve) for every method, and the headline
`beyond_artefacts`: the probe's AUC minus the strongest control, with a paired CI.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from tl_truth.probing.activations import ActivationStore
from tl_truth.probing.controls import artefact_controls, normalise_answer
from tl_truth.probing.grid import ProbeGrid
from tl_truth.probing.metrics import (
    accuracy_at_coverage,
    prediction_rejection_ratio,
    rejection_curve,
)
from tl_truth.probing.permutation import permutation_null
from tl_truth.probing.probe import Probe

EMBED_HOOK = "hook_embed"
COVERAGE = 0.8
CURVE_POINTS = 21  # the risk-coverage curve is written at coverage 0, 0.05, ..., 1


def probe_name(group: str, cell: Mapping[str, Any]) -> str:
    """The name a selected probe goes by in the reports' method tables.

    Args:
        group: the position group it was selected in ("exact", "last_prompt", ...).
        cell: the selected cell (`hook`, `position`).

    Returns:
        The method name.

    >>> probe_name("exact", {"hook": "blocks.1.hook_resid_post", "position": "exact_last"})
    'probe @ exact (blocks.1.hook_resid_post / exact_last)'
    """
    return f"probe @ {group} ({cell['hook']} / {cell['position']})"


def method_scores(
    grid: ProbeGrid,
    selected: Mapping[str, Any],
    acts: torch.Tensor,
    valid: torch.Tensor,
    hooks: Sequence[str],
    positions: Sequence[str],
    baselines: Mapping[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """Every method's score on every example (nan where it has none): probes, then baselines.

    Args:
        grid: the fitted probe grid.
        selected: the selected cells by position group (None: no probe for that group).
        acts: the grid's activations `[n, H, P, d]`.
        valid: which examples have each position `[n, P]`.
        hooks: the grid's hooks (the H axis of `acts`).
        positions: the grid's positions (the P axis).
        baselines: baseline name -> score per example.

    Returns:
        Method name (`probe_name` for the probes) -> score per example.

    With no cell selected, only the baselines are scored:

    >>> scores = method_scores(None, {"exact": None}, torch.zeros(3, 1, 1, 4), None, [], [],
    ...                        {"logits_mean": [0.2, 0.5, 0.9]})
    >>> {name: v.tolist() for name, v in scores.items()}
    {'logits_mean': [0.2, 0.5, 0.9]}
    """
    out = {}
    n = acts.shape[0]
    for group in ("exact", "last_generated", "last_prompt"):
        cell = selected.get(group)
        if cell is None:
            continue
        h, p = hooks.index(cell["hook"]), positions.index(cell["position"])
        rows = torch.nonzero(valid[:, p]).squeeze(1)
        full = np.full(n, np.nan)
        probe = grid.probe(cell["hook"], cell["position"])
        full[rows.numpy()] = probe.decision_function(acts[rows, h, p]).double().numpy()
        out[probe_name(group, cell)] = full
    out.update({k: np.asarray(v, dtype=float) for k, v in baselines.items()})
    return out


def embedding_control(
    store: ActivationStore, position: str, train: torch.Tensor, seed: int = 0
) -> dict | None:
    """A probe on the token embedding at `position`, trained like the grid's.

    Args:
        store: an activation store that captured `EMBED_HOOK`.
        position: the position to read the embedding at.
        train: the training rows.
        seed: the probe's CV seed.

    Returns:
        {"hook", "position", "scores": one per example}, or None if the store lacks the
        embedding or the training rows hold fewer than 3 of a class.

    >>> import tempfile
    >>> from tl_truth.probing import capture
    >>> from tl_truth.testing import tiny_model
    >>> records = [{"id": str(i), "task": "t", "split": "train" if i < 8 else "test",
    ...             "correct": i % 2 == 0, "prompt_token_ids": [1, 2 + i, 3],
    ...             "answer_token_ids": [4 + i, 5], "exact_answer_token_span": [3, 4]}
    ...            for i in range(12)]
    >>> with tempfile.TemporaryDirectory() as d:
    ...     store = capture(tiny_model("llama"), records, d, hooks=[EMBED_HOOK],
    ...                     positions=["exact_first"], progress=False)
    ...     control = embedding_control(store, "exact_first", store.split_mask("train"))
    >>> control["hook"], control["scores"].shape
    ('hook_embed', (12,))
    """
    if EMBED_HOOK not in store.hooks:
        return None
    x, valid = store.load(hooks=[EMBED_HOOK], positions=[position])
    x, valid = x[:, 0, 0], valid[:, 0]
    y = store.labels
    fit = train & valid
    if min(int(y[fit].sum()), int((1 - y[fit]).sum())) < 3:
        return None
    probe = Probe.from_data(x[fit], y[fit], hook=EMBED_HOOK, position=position, seed=seed)
    scores = np.full(len(y), np.nan)
    rows = torch.nonzero(valid).squeeze(1)
    scores[rows.numpy()] = probe.decision_function(x[rows]).double().numpy()
    return {"hook": EMBED_HOOK, "position": position, "scores": scores}


def rejection_metrics(
    methods: Mapping[str, np.ndarray], labels: np.ndarray, rows: np.ndarray
) -> dict:
    """PRR, accuracy at 80% coverage and the risk-coverage curve of each method on `rows`.

    Args:
        methods: method name -> score per example (higher: more likely correct).
        labels: 1 for a correct answer, per example.
        rows: the examples to evaluate on (a method with a nan there gets None).

    Returns:
        {"prr", "accuracy_at_80_coverage", "risk_coverage"}, each method name -> value.

    >>> labels = np.array([1, 1, 0, 0, 1])
    >>> out = rejection_metrics({"perfect": np.array([0.9, 0.8, 0.1, 0.2, 0.7])}, labels,
    ...                         np.arange(5))
    >>> out["prr"]["perfect"], out["accuracy_at_80_coverage"]["perfect"]
    (1.0, 0.75)
    """
    prr, acc80, curves = {}, {}, {}
    grid = np.linspace(0, 1, CURVE_POINTS)[1:]
    for name, s in methods.items():
        s_r, y_r = s[rows], labels[rows]
        if np.isnan(s_r).any():
            prr[name] = acc80[name] = None
            continue
        prr[name] = prediction_rejection_ratio(s_r, y_r)
        acc80[name] = accuracy_at_coverage(s_r, y_r, COVERAGE)
        cov, acc = rejection_curve(s_r, y_r)
        idx = np.clip(np.ceil(grid * len(cov) - 1e-9).astype(int) - 1, 0, len(cov) - 1)
        curves[name] = {"coverage": grid.tolist(), "risk": (1 - acc[idx]).tolist()}
    return {"prr": prr, "accuracy_at_80_coverage": acc80, "risk_coverage": curves}


def artefact_report(
    grid: ProbeGrid,
    store: ActivationStore,
    records: Sequence[Mapping[str, Any]],
    selected: Mapping[str, Any],
    acts: torch.Tensor,
    valid: torch.Tensor,
    methods: Mapping[str, np.ndarray],
    exact_positions: Sequence[str],
    n_boot: int = 1000,
    n_perm: int = 100,
    seed: int = 0,
    progress: bool = True,
) -> dict | None:
    """Controls, permutation null, rejection metrics and `beyond_artefacts` for the exact cell.

    Args:
        grid: the fitted probe grid (its hooks / positions index `acts`).
        store: the activation store (for the embedding control and the labels / splits).
        records: the answers, in store row order (exact answers, tasks).
        selected: the report's selected cells (`"exact"`, `"last_generated"`, ...).
        acts, valid: the grid's activations `[n, H, P, d]` and validity `[n, P]`.
        methods: every method's score per example (`method_scores`: the selected probes, then
            logit confidence and p(True)).
        exact_positions: the positions the exact cell was selected from.
        n_boot: bootstrap replicates; n_perm: label permutations (0 skips the null).
        seed: for the bootstrap, the permutations and the embedding probe's folds.

    Returns:
        The report.json blocks `controls`, `beyond_artefacts`, `per_task_auc`, `permutation`,
        `prr`, `accuracy_at_80_coverage`, `risk_coverage` (None without an exact cell).

    Without a selected exact-answer cell there is nothing to control (a full example is the
    main job: `tl_truth.studies.main_job.probe_report`):

    >>> artefact_report(None, None, [], {"exact": None}, None, None, {}, ()) is None
    True
    """
    ex = selected.get("exact")
    if ex is None:
        return None
    hooks, positions = grid.hooks, grid.positions
    labels = store.labels.numpy()
    train, test = store.split_mask("train"), store.split_mask("test")
    p_ex = positions.index(ex["position"])
    evaluate = (test & valid[:, p_ex]).numpy()
    name = probe_name("exact", ex)
    out = artefact_controls(
        labels=labels,
        train=train.numpy(),
        evaluate=evaluate,
        answers=[normalise_answer(r.get("exact_answer")) for r in records],
        tasks=[r["task"] for r in records],
        methods=methods,
        probe=name,
        embedding=embedding_control(store, ex["position"], train, seed),
        n_boot=n_boot,
        seed=seed,
    )
    result: dict[str, Any] = {
        "controls": out["controls"],
        "beyond_artefacts": out["beyond_artefacts"],
        "per_task_auc": out["per_task"] if len(out["per_task"]) > 1 else None,
    }
    rows = np.flatnonzero(evaluate & ~np.isnan(methods[name]))
    result.update(rejection_metrics(methods, labels, rows))

    result["permutation"] = None
    if n_perm > 0:
        cols = [positions.index(p) for p in exact_positions if p in positions]
        cells = [(h, p) for h in range(len(hooks)) for p in cols]
        chosen_c = [float(np.asarray(grid.C)[h, p]) for h, p in cells]
        null = permutation_null(
            acts,
            store.labels,
            train,
            test,
            valid,
            cells,
            observed=ex["auc"] if ex["auc"] is not None else float("nan"),
            n_perm=n_perm,
            chosen_c=chosen_c,
            cv=int(grid.metadata.get("cv", 3)),
            seed=seed,
            names=[(hooks[h], positions[p]) for h, p in cells],
            progress=progress,
        )
        result["permutation"] = null.to_dict()
    return result
