"""The intervention jobs: `steer` (add probe directions) and `patch` (patch right into wrong).

Both act on the model's forward pass with a correctness probe: `steer_job` pushes activations
along the probe's direction and judges the answers against random directions; `patch_job`
patches the right sample's activations into the wrong greedy answer of every "knows more than
it shows" question and reads the probe and the answer logit. Each makes what it lacks first
(a run in `<out>/run`, samples in `<out>/samples`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from tl_truth.config import (
    SWEEP_ALPHAS,
    PatchConfig,
    ProbeConfig,
    ResampleConfig,
    RunOptions,
    SteeringConfig,
    parse_layers,
)
from tl_truth.intervention.directions import from_probe
from tl_truth.intervention.store_probes import probes_from_store
from tl_truth.models import model_info
from tl_truth.probing.activations import ActivationStore
from tl_truth.probing.probe import Probe
from tl_truth.studies.family_jobs import families_job
from tl_truth.studies.job_setup import (
    RUN_DIR,
    SAMPLES_DIR,
    _configs,
    _given_probe,
    _in,
    _lazy,
    _one_source,
    _questions,
    log,
    run_cell,
    run_probe,
)
from tl_truth.studies.patch_study import PatchStudy, load_study, patching_study
from tl_truth.studies.resampling import Resampling
from tl_truth.studies.run_jobs import ensure_run
from tl_truth.studies.sample_jobs import resample_job
from tl_truth.studies.steering_eval import SteeringResult, steering_sweep
from tl_truth.studies.steering_protocol_result import FamilySteeringResult

# ---------------------------------------------------------------------------------------------
# steer


def steer_job(
    options: RunOptions | None = None,
    steering: SteeringConfig | None = None,
    probe: str | Path | Probe | None = None,
    from_run: str | Path | None = None,
    probing: ProbeConfig | None = None,
    model: Any = None,
    samples: str | Path | None = None,
    resampling: ResampleConfig | None = None,
) -> SteeringResult | FamilySteeringResult:
    """`tl-truth steer`: steer along probe directions vs random ones, on held-out questions.

    With `steering.directions`, the families are compared on held-out data instead
    (`tl_truth.studies.family_jobs.families_job`: settings chosen on validation questions
    carved from the run's train questions, evaluated once on test; a `FamilySteeringResult`).

    Otherwise the single-family sweep: the directions come from `probe` (a saved probe or a
    `Probe`), or are refitted per layer on the train split of `from_run` (`probes_from_store`,
    at `steering.hook_kind` and the run's best position). With neither, a run is made first in
    `<out>/run` (`ensure_run`) on `steering.train_limit` questions, capturing
    `steering.hook_kind` at `steering.layers` (all layers when None, to find the best one).
    The sweep answers the first `options.limit` test questions of `options.dataset`. Writes
    steering.json / .md / .png to `options.out`.

    Args:
        options: the model, questions (`limit`: held-out test questions), output directory.
        steering: layers, alphas, units, scope, random directions, hook kind (and the
            families, scopes, head ks, validation size for `directions`).
        probe: a saved probe (path without extension) or a `Probe` (None: from a run).
        from_run: a `tl-truth run` directory to refit probes from (None: made in
            `<out>/run` when `probe` is None too).
        probing: the grid settings of the run it makes.
        model: the model (None: loaded from `options`).
        samples: a `tl-truth resample` directory for the contrastive family (None: the fit
            questions answered wrong are resampled).
        resampling: K, temperature and seed of that resampling.

    Returns:
        The `SteeringResult` (sweep) or `FamilySteeringResult` (`directions`).

    >>> import tempfile, torch
    >>> import tl_truth as tt
    >>> from tl_truth.testing import tiny_model
    >>> model = tiny_model("llama")
    >>> x, y = torch.randn(20, model.cfg.d_model), torch.arange(20) % 2
    >>> probe = tt.Probe.from_data(x, y, hook="blocks.1.hook_resid_post", position="last_prompt")
    >>> with tempfile.TemporaryDirectory() as d:
    ...     opts = tt.RunOptions(dataset="capitals", limit=1, out=d, max_new_tokens=2, quiet=True)
    ...     result = steer_job(opts, tt.SteeringConfig(alphas="4", n_random=1), probe=probe,
    ...                        model=model)
    >>> [(s["layer"], s["alpha"]) for s in result.settings], result.n_questions
    ([(1, 4.0)], 1)
    """
    options, steering, probing, resampling = _configs(
        "steer", options=options, steering=steering, probing=probing, resampling=resampling
    )
    _one_source(probe, from_run)
    lazy = _lazy(options, model)
    if steering.directions is not None:
        if probe is not None:
            raise ValueError(
                "--directions fits its directions on a run's train questions: give "
                "--from-run DIR or --dataset, not --probe"
            )
        return families_job(options, steering, probing, resampling, from_run, samples, lazy)
    if probe is None and from_run is None:
        layers = probing.layers if steering.layers is None else steering.layers
        run_probing = replace(probing, hooks=(steering.hook_kind,), layers=layers)
        from_run = ensure_run(_in(options, RUN_DIR, limit=steering.train_limit), run_probing, lazy)
    model = lazy.get()
    info = model_info(model)
    if probe is not None:
        if steering.direction != "probe":
            raise ValueError(
                f"--direction {steering.direction} needs the activations of a run (--from-run "
                "or --dataset), not a saved probe"
            )
        p = _given_probe(probe, info)
        probes = {p.layer: (p, from_probe(p))}
    else:
        run_dir = Path(from_run)
        best = run_cell(run_dir)
        store = ActivationStore.open(run_dir / "activations")
        layers = (
            [best["layer"]]
            if steering.layers is None
            else parse_layers(steering.layers, info.n_layers)
        )
        probes = probes_from_store(
            store,
            layers,
            best["position"],
            hook_kind=steering.hook_kind,
            expect_model=info,
            direction=steering.direction,
        )
    held_out = _questions(replace(options, limit=None)).test
    if options.limit:
        held_out = held_out.limit(options.limit)
    result = steering_sweep(
        model,
        held_out,
        probes,
        list(steering.alphas or SWEEP_ALPHAS),
        scope=steering.scope,
        units=steering.units,
        n_random=steering.n_random,
        config=options.generation(),
        progress=options.progress,
    )
    result.meta = {
        "model": info.to_dict(),
        "dataset": options.dataset,
        "probe_position": next(iter(probes.values()))[0].position,
        "direction": steering.direction,
    }
    result.save(options.out)
    return result


def _finished_patch(
    out: Path, samples: str, patching: PatchConfig, layers: list[int], probe: Probe, info
) -> PatchStudy | None:
    """The patched questions already in `out` if they were made with these settings."""
    done = out / "patching.json"
    if not done.exists():
        return None
    study = load_study(out)
    same = (
        study.meta.get("samples") == samples
        and study.meta.get("split") == patching.split
        and study.average().layers == layers
        and study.average().hook_kind == patching.hook_kind
        and study.probe.get("hook") == probe.hook
        and study.probe.get("position") == probe.position
        and (study.meta.get("model") or {}).get("fingerprint") == info.fingerprint
        and (patching.max_questions is None or len(study.results) <= patching.max_questions)
    )
    if not same:
        raise ValueError(f"{done} was made with other settings; use another --out")
    log.info(f"reusing the patched questions in {done}")
    return study


def patch_job(
    options: RunOptions | None = None,
    patching: PatchConfig | None = None,
    samples: str | Path | None = None,
    probe: str | Path | Probe | None = None,
    from_run: str | Path | None = None,
    resampling: ResampleConfig | None = None,
    probing: ProbeConfig | None = None,
    model: Any = None,
) -> PatchStudy:
    """`tl-truth patch`: patch the right sample into the wrong greedy run of every "knows more
    than it shows" question, reading the probe and the answer logit.

    The samples come from `samples`, or `resample_job` makes them in `<out>/samples` (with
    `from_run`'s greedy answers, or a run of its own). The probe is `probe`, `from_run`'s best
    probe, or that of the run that scored the samples. Finished patched questions in
    `options.out` are reused. Writes patching.json / .md, patching_average.png, examples.

    Args:
        options: the model, questions (to resample first) and output directory.
        patching: layers, hook kind, split, most questions.
        samples: a `tl-truth resample` directory (None: made in `<out>/samples`).
        probe: a saved probe (path without extension) or a `Probe`.
        from_run: a `tl-truth run` directory whose best probe to read.
        resampling: K, temperature and seed, to resample first.
        probing: the grid settings of a run it makes.
        model: the model (None: loaded from `options`).

    Returns:
        The `PatchStudy`.

    One hand-made "knows more than it shows" question on a tiny random model:

    >>> import tempfile, torch
    >>> import tl_truth as tt
    >>> from tl_truth.studies import SampleSet
    >>> from tl_truth.testing import tiny_model
    >>> def rec(answer_ids, span, correct, exact, i=0):
    ...     return {"task": "t", "id": "q", "split": "test", "question": "Capital of France?",
    ...             "gold": "Paris", "answer": exact, "exact_answer": exact, "correct": correct,
    ...             "category": "correct" if correct else "incorrect", "sample_index": i,
    ...             "prompt_token_ids": [1, 5, 9, 30, 40], "answer_token_ids": answer_ids,
    ...             "exact_answer_token_span": [5 + span[0], 5 + span[1]]}
    >>> wrong = rec([50, 60, 70, 71, 80], (2, 4), False, "Lyon")
    >>> right = rec([50, 55, 60, 90, 80, 81], (3, 4), True, "Paris", i=1)
    >>> model = tiny_model("llama")
    >>> x, y = torch.randn(20, model.cfg.d_model), torch.arange(20) % 2
    >>> probe = tt.Probe.from_data(x, y, hook="blocks.1.hook_resid_pre", position="exact_last")
    >>> with tempfile.TemporaryDirectory() as d:
    ...     samples = Resampling([SampleSet(wrong, [right, wrong])]).save(f"{d}/samples")
    ...     opts = tt.RunOptions(out=f"{d}/patch", quiet=True)
    ...     study = patch_job(opts, samples=samples, probe=probe, model=model)
    >>> len(study.results), study.pairs[0]["wrong"], study.pairs[0]["right"]
    (1, 'Lyon', 'Paris')
    """
    options, patching, resampling, probing = _configs(
        "patch", options=options, patching=patching, resampling=resampling, probing=probing
    )
    _one_source(probe, from_run)
    lazy = _lazy(options, model)
    if samples is None:
        samples = resample_job(_in(options, SAMPLES_DIR), resampling, from_run, probing, lazy).out
    res = Resampling.load(samples)
    model = lazy.get()
    info = model_info(model)
    if probe is None and from_run is None:
        from_run = (res.meta.get("probe") or {}).get("from_run")
        if from_run is None:
            raise ValueError(
                f"the samples in {samples} were not scored by a run's probe: "
                "give --probe PATH or --from-run DIR"
            )
    the_probe = _given_probe(probe, info) if probe is not None else run_probe(from_run, info)
    layers = parse_layers(patching.layers, info.n_layers)
    sets = (
        res.sets
        if patching.split == "all"
        else [s for s in res.sets if s.greedy["split"] == patching.split]
    )
    out = Path(options.out)
    study = _finished_patch(out, str(samples), patching, layers, the_probe, info)
    if study is None:
        study = patching_study(
            model,
            sets,
            the_probe,
            layers,
            hook_kind=patching.hook_kind,
            max_questions=patching.max_questions,
            progress=options.progress,
        )
        study.meta |= {"samples": str(samples), "split": patching.split, "model": info.to_dict()}
    study.save(out)
    return study
