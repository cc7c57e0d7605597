"""`tl-truth steer --directions ...`: direction families compared on held-out data.

The job behind `steer_job` when `SteeringConfig.directions` is set. From a run (given, or made
in `<out>/run`): carve `n_validation` validation questions from its train questions
(`carve_validation`), fit every family on the other train questions (`fit_families`; the
contrastive family's pairs come from `samples`, or from resampling the fit questions the
run answered wrong, into `<out>/contrastive_samples`), choose each family's setting on the
validation questions and evaluate it once on the test questions (`select_and_test`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from tl_truth.answers.prompts import parse_format
from tl_truth.answers.run import AnswerRun, answer_questions
from tl_truth.config import ProbeConfig, ResampleConfig, RunOptions, SteeringConfig, parse_layers
from tl_truth.data.questions import QADataset
from tl_truth.models import model_info
from tl_truth.probing.activations import ActivationStore
from tl_truth.studies.family_setup import (
    carve_validation,
    exact_position,
    fit_families,
    reference_direction,
)
from tl_truth.studies.job_setup import RUN_DIR, _in, _LazyModel, _questions, run_cell
from tl_truth.studies.resampling import Resampling, SampleSet
from tl_truth.studies.run_jobs import ensure_run
from tl_truth.studies.sample_jobs import samples_in
from tl_truth.studies.steering_protocol import (
    DEFAULT_SD_ALPHAS,
    abs_alphas,
    generation_answer,
    select_and_test,
)
from tl_truth.studies.steering_protocol_result import FamilySteeringResult

CONTRASTIVE_SAMPLES_DIR = "contrastive_samples"


def _alpha_grids(
    steering: SteeringConfig, families: list[str], reference: Any
) -> dict[str, tuple[float, ...]]:
    """family -> alphas: `family_alphas`, else `alphas`, else the family's default grid."""
    given = dict(steering.family_alphas or ())
    grids = {}
    for f in families:
        if f in given:
            grids[f] = given[f]
        elif steering.alphas is not None:
            grids[f] = steering.alphas
        elif steering.units == "sd":
            grids[f] = DEFAULT_SD_ALPHAS[f]
        else:
            grids[f] = abs_alphas(reference())
    return grids


def _contrastive_sets(
    options: RunOptions,
    resampling: ResampleConfig,
    samples: str | Path | None,
    run: AnswerRun,
    questions: QADataset,
    fit_keys: set,
    model: Any,
    info: Any,
) -> tuple[list[SampleSet], str]:
    """The resampled questions for contrastive pairs, and where they came from."""
    if samples is not None:
        res = Resampling.load(samples)
        made_by = (res.meta.get("model") or {}).get("fingerprint")
        if made_by is not None and made_by != info.fingerprint:
            raise ValueError(f"the samples in {samples} come from another model; resample first")
        return res.sets, str(samples)
    # Only the fit questions answered wrong can give a (wrong greedy, right sample) pair.
    wrong = {
        (r["task"], r["id"])
        for r in run.records
        if (r["task"], r["id"]) in fit_keys
        and not r["correct"]
        and r.get("exact_answer_token_span") is not None
    }
    subset = questions.subset([q for q in questions.questions if (q.task, q.id) in wrong])
    out = Path(options.out) / CONTRASTIVE_SAMPLES_DIR
    if not len(subset):
        return [], str(out)
    res = samples_in(out, model, subset, run, options, resampling)
    return res.sets, str(out)


def families_job(
    options: RunOptions,
    steering: SteeringConfig,
    probing: ProbeConfig,
    resampling: ResampleConfig,
    from_run: str | Path | None,
    samples: str | Path | None,
    lazy: _LazyModel,
) -> FamilySteeringResult:
    """Compare `steering.directions` on held-out data; write steering.json / .md / .png.

    Args:
        options: the model, questions (`limit`: test questions), output directory.
        steering: families, layers, alphas, units, scopes, head ks, n_validation, seed.
        probing: the grid settings of the run it makes (and `n_boot`).
        resampling: K, temperature and seed for the contrastive family's samples.
        from_run: a `tl-truth run` directory (None: made in `<out>/run`).
        samples: a `tl-truth resample` directory for the contrastive family (None: resample).
        lazy: the model, loaded on first use.

    Returns:
        The `FamilySteeringResult`.
    """
    if from_run is None:
        layers = probing.layers if steering.layers is None else steering.layers
        run_probing = replace(probing, hooks=(steering.hook_kind,), layers=layers)
        from_run = ensure_run(_in(options, RUN_DIR, limit=steering.train_limit), run_probing, lazy)
    model = lazy.get()
    info = model_info(model)
    run_dir = Path(from_run)
    best = run_cell(run_dir)
    store = ActivationStore.open(run_dir / "activations")
    position = best["position"]
    if steering.layers is None:
        layers, head_layers = [best["layer"]], None
    else:
        layers = parse_layers(steering.layers, info.n_layers)
        head_layers = layers
    run = AnswerRun.load(run_dir)
    train_keys = [
        (r["task"], r["id"])
        for r in run.records
        if r["split"] == "train" and r.get("sample_index", 0) == 0
    ]
    validation_keys = carve_validation(train_keys, steering.n_validation, steering.seed)
    fit_keys = set(train_keys) - set(validation_keys)
    questions = _questions(replace(options, limit=None))
    by_key = {(q.task, q.id): q for q in questions.questions}
    missing = [k for k in validation_keys if k not in by_key]
    if missing:
        raise ValueError(
            f"{len(missing)} train questions of the run in {run_dir} are not in --dataset "
            f"{options.dataset} (e.g. {missing[0]}): give the dataset the run was made on"
        )
    validation = questions.subset([by_key[k] for k in validation_keys], f"{questions.name}[val]")
    test = questions.test.limit(options.limit)
    families = list(steering.directions)
    sets, samples_from = None, None
    if "contrastive" in families:
        sets, samples_from = _contrastive_sets(
            options, resampling, samples, run, questions, fit_keys, model, info
        )
    candidates, skipped = fit_families(
        model,
        families,
        store,
        run.records,
        layers,
        position,
        validation_keys,
        hook_kind=steering.hook_kind,
        head_layers=head_layers,
        head_ks=steering.head_ks,
        sample_sets=sets,
        expect_model=info,
        seed=steering.seed,
        progress=options.progress,
    )
    fitted = [f for f in families if f in candidates]
    alphas = _alpha_grids(
        steering,
        fitted,
        lambda: reference_direction(
            store, layers[0], position, steering.hook_kind, validation_keys
        ),
    )
    config = options.generation()
    fmt = parse_format(options.prompt, model)

    def answer_all(qs: QADataset) -> list[dict]:
        run_ = answer_questions(model, qs, config, fmt, extract_with_model=False, progress=False)
        return run_.records

    result = select_and_test(
        model,
        {f: candidates[f] for f in fitted},
        validation,
        test,
        generation_answer(model, answer_all),
        alphas,
        scopes=steering.scopes or (steering.scope,),
        units=steering.units,
        n_random=steering.n_random,
        n_boot=probing.n_boot,
        seed=steering.seed,
        skipped=skipped,
        progress=options.progress,
    )
    heads = candidates.get("heads")
    result.meta = {
        "model": info.to_dict(),
        "dataset": options.dataset,
        "from_run": str(run_dir),
        "probe_position": position,
        "exact_position": exact_position(position),
        "layers": layers,
        "head_layers": head_layers,
        "hook_kind": steering.hook_kind,
        "seed": steering.seed,
        "n_boot": probing.n_boot,
        "n_fit": len(fit_keys),
        "validation_questions": [list(k) for k in validation_keys],
        "contrastive_samples": samples_from,
        "head_ranking": heads[0].heads.to_list()[:20] if heads else None,
    }
    result.save(options.out)
    return result
