"""The jobs behind the `tl-truth` subcommands: one function each, as usable from a notebook.

Every job takes `RunOptions` and its own configs (`tl_truth.config`; a config left None is the
subcommand's default, `defaults(command)`), loads the model when it first needs one (or uses
`model=`), makes what it needs first, writes its outputs to `options.out` and returns its result:

===================  =========================================================================
`generate_job`       answers, graded, exact answers located              -> `AnswerRun`
`run_job`            the main job: + activations, probe grid, baselines  -> `ProbeReport`
`steer_job`          probe directions vs random ones                      -> `SteeringResult`
`resample_job`       K samples per question, probe scores, error types    -> `ResampleResult`
`select_job`         greedy vs random vs majority vs probe-chosen sample  -> `SelectionResult`
`generalize_job`     train on task A, test on task B                      -> `GeneralizationResult`
`patch_job`          patch right samples into wrong greedy answers        -> `PatchStudy`
===================  =========================================================================

Prerequisites. A job that needs a run (a probe and its activations) and is given none
(`from_run=None`) gets one from `ensure_run`, which reuses a finished run with the same
questions, model, generation settings, hooks and positions and otherwise runs `run_job` (which
itself resumes finished generations and activation shards): `steer` into `<out>/run` (on
`SteeringConfig.train_limit` questions, capturing only the layers it steers when they are
given), `resample` into `<out>/run`, `generalize` into `<out>`. `select` given a dataset and no
samples resamples into `<out>` first, `patch` given no samples into `<out>/samples`.
Finished samples and patched questions in the output directory are reused too.

Progress notes ("reusing ...") go to the `tl_truth.studies.jobs` logger at INFO level.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tl_truth.answers.generation import GenerationConfig, same_generation_settings
from tl_truth.answers.prompts import parse_format
from tl_truth.answers.run import AnswerRun, answer_questions
from tl_truth.config import (
    GeneralizeConfig,
    PatchConfig,
    ProbeConfig,
    ResampleConfig,
    RunOptions,
    SelectConfig,
    SteeringConfig,
    defaults,
    parse_layers,
)
from tl_truth.data.load import load_questions
from tl_truth.data.questions import QADataset
from tl_truth.intervention.directions import from_probe
from tl_truth.intervention.store_probes import probes_from_store
from tl_truth.models import ModelInfo, load_model, model_info
from tl_truth.probing.activations import ActivationStore
from tl_truth.probing.probe import Probe
from tl_truth.probing.scoring import score_records
from tl_truth.results import json_safe, write_json
from tl_truth.studies.error_types import ErrorTypeReport, error_type_report
from tl_truth.studies.generalization import GeneralizationResult, generalization_matrix
from tl_truth.studies.main_job import ProbeReport, run_all
from tl_truth.studies.patch_study import PatchStudy, load_study, patching_study
from tl_truth.studies.resampling import SAMPLES_FILE, Resampling, resample
from tl_truth.studies.sampling_baselines import compare_with_probe
from tl_truth.studies.selection import SelectionResult, select_answers
from tl_truth.studies.steering_eval import SteeringResult, steering_sweep

log = logging.getLogger(__name__)

RUN_DIR = "run"  # where steer / resample put the run they make: <out>/run
SAMPLES_DIR = "samples"  # where patch puts the samples it makes: <out>/samples

__all__ = [
    "ResampleResult",
    "ensure_run",
    "finished_run",
    "finished_samples",
    "generalize_job",
    "generate_job",
    "load_model_for",
    "patch_job",
    "resample_job",
    "run_job",
    "run_probe",
    "select_job",
    "steer_job",
]


# ---------------------------------------------------------------------------------------------
# The model, loaded once and only when a job needs it


def load_model_for(options: RunOptions) -> Any:
    """The model the options name (torch threads set first: loading is CPU work too)."""
    _set_threads(options)
    return load_model(
        options.model,
        backend=options.backend,
        device=options.device,
        compatibility_mode=options.compat,
    )


def _set_threads(options: RunOptions) -> None:
    if options.threads:
        import torch

        torch.set_num_threads(options.threads)


class _LazyModel:
    """The model a job runs on: the one given, or loaded from the options on first use."""

    def __init__(self, options: RunOptions, model: Any = None):
        self.options, self._model, self.load_s = options, model, None
        _set_threads(options)

    def get(self) -> Any:
        if self._model is None:
            t0 = time.perf_counter()
            self._model = load_model_for(self.options)
            self.load_s = time.perf_counter() - t0
        return self._model


def _lazy(options: RunOptions, model: Any) -> _LazyModel:
    return model if isinstance(model, _LazyModel) else _LazyModel(options, model)


def _configs(command: str, **given: Any) -> list[Any]:
    """The given configs, each None replaced by the subcommand's default."""
    base = defaults(command)
    return [base[name] if value is None else value for name, value in given.items()]


def _questions(options: RunOptions, dataset: QADataset | None = None) -> QADataset:
    if dataset is not None:
        return dataset
    if options.dataset is None:
        raise ValueError("no dataset given (--dataset)")
    return load_questions(options.dataset, options.limit)


def _in(options: RunOptions, subdir: str, **changes: Any) -> RunOptions:
    return replace(options, out=str(Path(options.out) / subdir), **changes)


# ---------------------------------------------------------------------------------------------
# generate, run, and the run other jobs need


def generate_job(options: RunOptions | None = None, model: Any = None) -> AnswerRun:
    """`tl-truth generate`: answer, grade and locate exact answers; writes generations.jsonl
    and summary.json to `options.out`."""
    (options,) = _configs("generate", options=options)
    dataset = _questions(options)
    lazy = _lazy(options, model)
    model = lazy.get()
    run = answer_questions(
        model,
        dataset,
        options.generation(),
        parse_format(options.prompt, model),
        extract_with_model=options.model_extract,
        progress=options.progress,
    )
    if lazy.load_s is not None:
        run.summary["timings"]["load_model_s"] = round(lazy.load_s, 2)
    run.save(options.out)
    return run


def run_job(
    options: RunOptions | None = None,
    probing: ProbeConfig | None = None,
    model: Any = None,
    dataset: QADataset | None = None,
) -> ProbeReport:
    """`tl-truth run`: generate, capture, probe grid, baselines -> report.json / report.md /
    probe_grid.png / best_probe.* in `options.out` (finished generations and shards are reused).
    `dataset`: the questions if already loaded (default: `options.dataset`, `options.limit`)."""
    options, probing = _configs("run", options=options, probing=probing)
    dataset = _questions(options, dataset)
    model = _lazy(options, model).get()
    return run_all(
        model,
        dataset,
        options.out,
        options.generation(),
        parse_format(options.prompt, model),
        hooks=probing.hook_names(model.cfg.n_layers),
        positions=probing.position_names(),
        n_boot=probing.n_boot,
        p_true=probing.p_true,
        extract_with_model=options.model_extract,
        progress=options.progress,
        locate=probing.locate,
        n_perm=probing.n_perm,
    )


def finished_run(
    run_dir: str | Path,
    dataset: QADataset,
    options: RunOptions,
    probing: ProbeConfig,
    info: ModelInfo,
) -> bool:
    """Whether `run_dir` holds a finished run of these questions, model, generation settings,
    hooks and positions (its bootstrap and p(True) settings may differ: they do not change the
    probe)."""
    run_dir = Path(run_dir)
    needed = ("report.json", "best_probe.json", "generations.jsonl")
    if not all((run_dir / name).exists() for name in needed):
        return False
    report = json.loads((run_dir / "report.json").read_text())
    run = AnswerRun.load(run_dir)
    return (
        [(r["task"], r["id"]) for r in run.records] == [(q.task, q.id) for q in dataset.questions]
        and (report.get("model") or {}).get("fingerprint") == info.fingerprint
        and same_generation_settings(run.summary.get("generation"), options.generation())
        and report.get("hooks") == probing.hook_names(info.n_layers)
        and report.get("positions") == list(probing.position_names())
        and report.get("locate", "paper") == probing.locate
    )


def ensure_run(
    options: RunOptions,
    probing: ProbeConfig | None = None,
    model: Any = None,
    dataset: QADataset | None = None,
) -> Path:
    """The run in `options.out`: reused if finished (`finished_run`), else made by `run_job`."""
    probing = probing or ProbeConfig()
    dataset = _questions(options, dataset)
    lazy = _lazy(options, model)
    run_dir = Path(options.out)
    if finished_run(run_dir, dataset, options, probing, model_info(lazy.get())):
        log.info(f"reusing the run in {run_dir}")
    else:
        run_job(options, probing, lazy, dataset)
    return run_dir


def run_probe(run_dir: str | Path, info: ModelInfo | None = None) -> Probe:
    """The best probe a `tl-truth run` saved (trained on its train split)."""
    path = Path(run_dir) / "best_probe"
    if not path.with_suffix(".json").exists():
        raise FileNotFoundError(f"{run_dir} has no best_probe.json: run `tl-truth run` first")
    return Probe.load(path, expect_model=info)


def _given_probe(probe: str | Path | Probe, info: ModelInfo) -> Probe:
    if isinstance(probe, Probe):
        probe.check_compatible(info)
        return probe
    return Probe.load(probe, expect_model=info)


def _one_source(probe: Any, from_run: Any) -> None:
    if probe is not None and from_run is not None:
        raise ValueError("give at most one of --probe PATH or --from-run DIR")


# ---------------------------------------------------------------------------------------------
# steer


def steer_job(
    options: RunOptions | None = None,
    steering: SteeringConfig | None = None,
    probe: str | Path | Probe | None = None,
    from_run: str | Path | None = None,
    probing: ProbeConfig | None = None,
    model: Any = None,
) -> SteeringResult:
    """`tl-truth steer`: steer along probe directions vs random ones, on held-out questions.

    The directions come from `probe` (a saved probe or a `Probe`), or are refitted per layer on
    the train split of `from_run` (`probes_from_store`, at `steering.hook_kind` and the run's
    best position). With neither, a run is made first in `<out>/run` (`ensure_run`) on
    `steering.train_limit` questions, capturing `steering.hook_kind` at `steering.layers` (all
    layers when None, to find the best one). The sweep answers the first `options.limit` test
    questions of `options.dataset`. Writes steering.json / .md / .png to `options.out`.
    """
    options, steering, probing = _configs(
        "steer", options=options, steering=steering, probing=probing
    )
    _one_source(probe, from_run)
    lazy = _lazy(options, model)
    if probe is None and from_run is None:
        layers = probing.layers if steering.layers is None else steering.layers
        run_probing = replace(probing, hooks=(steering.hook_kind,), layers=layers)
        from_run = ensure_run(_in(options, RUN_DIR, limit=steering.train_limit), run_probing, lazy)
    model = lazy.get()
    info = model_info(model)
    if probe is not None:
        p = _given_probe(probe, info)
        probes = {p.layer: (p, from_probe(p))}
    else:
        run_dir = Path(from_run)
        store = ActivationStore.open(run_dir / "activations")
        report = json.loads((run_dir / "report.json").read_text())
        best = report.get("best") or report["selected"]["any"]
        if best is None:
            raise ValueError(f"the run in {run_dir} has no fitted probe cell (too few examples)")
        layers = (
            [best["layer"]]
            if steering.layers is None
            else parse_layers(steering.layers, info.n_layers)
        )
        probes = probes_from_store(
            store, layers, best["position"], hook_kind=steering.hook_kind, expect_model=info
        )
    held_out = _questions(replace(options, limit=None)).test
    if options.limit:
        held_out = held_out.limit(options.limit)
    result = steering_sweep(
        model,
        held_out,
        probes,
        list(steering.alphas),
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
    }
    result.save(options.out)
    return result


# ---------------------------------------------------------------------------------------------
# resample -> error types -> select


@dataclass
class ResampleResult:
    """What `resample_job` made: the samples (scored by the run's probe) and their error types."""

    samples: Resampling
    error_types: ErrorTypeReport
    out: Path
    from_run: Path  # the run whose greedy answers, probe and activations were used
    sampling_baselines: dict | None = None  # `studies.sampling_baselines.compare_with_probe`

    def to_markdown(self) -> str:
        res, s = self.samples, self.samples.summary()
        return (
            f"{len(res)} questions x K={res.k}: greedy accuracy {s['greedy_accuracy']}, "
            f"sample accuracy {s['sample_accuracy']}, pass@K {s['pass_at_k'][str(res.k)]}\n"
            f"greedy wrong: {s['n_greedy_wrong']}, right answer among the samples for "
            f"{s['pass_at_k_greedy_wrong']} of them\n\n"
            f"## {self.error_types.title()}\n\n{self.error_types.to_markdown()}"
            + _sampling_lines(self.sampling_baselines)
        )


def _sampling_lines(b: dict | None) -> str:
    if not b:
        return ""
    lines = [
        "",
        f"## Sampling baselines vs the probe ({b['n']} questions, {b['n_correct']} greedy right;"
        f" clusters: {b['clustering']})",
        "",
        "| method | AUC | 95% CI |",
        "|---|---|---|",
    ]
    for name, auc in b["auc"].items():
        lo, hi = b["ci"][name]
        ci = "" if lo is None else f"[{lo:.3f}, {hi:.3f}]"
        lines.append(f"| {name} | {'n/a' if auc != auc else f'{auc:.3f}'} | {ci} |")
    return "\n".join(lines) + "\n"


def finished_samples(
    out: str | Path, dataset: QADataset, info: ModelInfo, sample_cfg: GenerationConfig
) -> Resampling | None:
    """The samples already in `out` if they were made for these questions and settings (None
    if there are none; ValueError if they were made for others)."""
    out = Path(out)
    if not (out / SAMPLES_FILE).exists():
        return None
    old = Resampling.load(out)
    same = (
        [s.key for s in old.sets] == [(q.task, q.id) for q in dataset.questions]
        and (old.meta.get("model") or {}).get("fingerprint") == info.fingerprint
        and same_generation_settings(old.meta.get("generation"), sample_cfg)
    )
    if not same:
        raise ValueError(
            f"{out} holds samples for other questions, model or settings; "
            "use another --out or delete it"
        )
    log.info(f"reusing the samples in {out / SAMPLES_FILE}")
    return old


def resample_job(
    options: RunOptions | None = None,
    resampling: ResampleConfig | None = None,
    from_run: str | Path | None = None,
    probing: ProbeConfig | None = None,
    model: Any = None,
) -> ResampleResult:
    """`tl-truth resample`: K samples per question next to the greedy answer, every one scored
    by the run's best probe, and the error-type report (a probe per type on the run's
    activations). The greedy answers, the answer length and the probe come from `from_run`;
    without one, a run is made first in `<out>/run`. Finished samples and scores in
    `options.out` are reused. Writes samples.jsonl, resample_summary.json, error_types.*.
    """
    options, resampling, probing = _configs(
        "resample", options=options, resampling=resampling, probing=probing
    )
    dataset = _questions(options)
    lazy = _lazy(options, model)
    out = Path(options.out)
    if from_run is None:
        run_dir = ensure_run(_in(options, RUN_DIR), probing, lazy, dataset)
    else:
        run_dir = Path(from_run)
    model = lazy.get()
    info = model_info(model)
    run = AnswerRun.load(run_dir)
    # samples must be generated like the greedy answers they are compared with
    max_new = run.summary.get("generation", {}).get("max_new_tokens", options.max_new_tokens)
    probe = run_probe(run_dir, info)
    config = GenerationConfig(
        max_new_tokens=max_new, batch_size=options.batch_size, seed=resampling.seed
    )
    sample_cfg = GenerationConfig(
        **{**vars(config), "temperature": resampling.temperature, "num_samples": resampling.k}
    )
    res = finished_samples(out, dataset, info, sample_cfg)
    if res is None:
        res = resample(
            model,
            dataset,
            k=resampling.k,
            temperature=resampling.temperature,
            config=config,
            fmt=parse_format(options.prompt, model),
            greedy=run.records,
            extract_with_model=options.model_extract,
            progress=options.progress,
            locate=run.summary.get("locate", "paper"),
        )
        res.save(out)  # the slow part is kept even if scoring below fails
    cell = {"hook": probe.hook, "position": probe.position}
    flat = [r for s in res.sets for r in (s.greedy, *s.samples)]
    if res.meta.get("probe") != cell | {"from_run": str(run_dir)} or any(
        "probe_score" not in r for r in flat
    ):
        # the correctness probe's P(correct) on every sample and greedy answer (`select`)
        scores = score_records(model, probe, flat, progress=options.progress)
        for r, v in zip(flat, scores.tolist(), strict=True):
            r["probe_score"] = None if v != v else round(v, 6)
        res.meta["probe"] = cell | {"from_run": str(run_dir)}
    store = ActivationStore.open(run_dir / "activations")
    X, available = store.cell_by_key(probe.hook, probe.position, [s.key for s in res.sets])
    reference = [s.greedy.get("probe_score") for s in res.sets]
    res.save(out)
    types = error_type_report(
        res.sets, X, available, cell, n_boot=probing.n_boot, reference_scores=reference
    )
    types.save(out)
    # black-box sampling baselines (semantic entropy, lexical similarity, agreement with the
    # greedy answer) against the probe on the same questions
    baselines = compare_with_probe(res.sets, reference, n_boot=probing.n_boot)
    write_json(out / "sampling_baselines.json", json_safe(baselines))
    return ResampleResult(res, types, out, run_dir, baselines)


def select_job(
    options: RunOptions | None = None,
    selection: SelectConfig | None = None,
    samples: str | Path | None = None,
    resampling: ResampleConfig | None = None,
    from_run: str | Path | None = None,
    probing: ProbeConfig | None = None,
    model: Any = None,
) -> SelectionResult:
    """`tl-truth select`: greedy vs random vs majority vote vs the probe's choice among the
    samples, with bootstrap CIs (`probing.n_boot`). The samples come from `samples` (a
    `tl-truth resample` directory), else from `options.out`; given `options.dataset` and no
    `samples`, `resample_job` makes them in `options.out` first (reusing finished ones).
    Writes selection.json / .md / .png to `options.out`.
    """
    options, selection, resampling, probing = _configs(
        "select", options=options, selection=selection, resampling=resampling, probing=probing
    )
    if samples is not None:
        src = Path(samples)
    else:
        if options.dataset is not None:
            resample_job(options, resampling, from_run, probing, model)
        src = Path(options.out)
    if not (src / SAMPLES_FILE).exists():
        raise FileNotFoundError(
            f"no samples in {src}: give --samples DIR (a `tl-truth resample` directory), or "
            "--dataset to resample first"
        )
    res = Resampling.load(src)
    scores = None
    if any("probe_score" in r for s in res.sets for r in s.samples):
        scores = {
            s.key: [
                float("nan") if r.get("probe_score") is None else r["probe_score"]
                for r in s.samples
            ]
            for s in res.sets
        }
    else:
        log.warning("no probe scores in the samples (resample with --from-run): no probe row")
    result = select_answers(
        res.sets,
        scores,
        n_boot=probing.n_boot,
        split=None if selection.split == "all" else selection.split,
    )
    result.meta = {"samples": str(src), "split": selection.split, "probe": res.meta.get("probe")}
    result.save(options.out)
    return result


# ---------------------------------------------------------------------------------------------
# generalize, patch


def generalize_job(
    options: RunOptions | None = None,
    generalization: GeneralizeConfig | None = None,
    from_run: str | Path | None = None,
    probing: ProbeConfig | None = None,
    model: Any = None,
) -> GeneralizationResult:
    """`tl-truth generalize`: the train-task x test-task AUC matrix of one run holding several
    tasks; without `from_run` the run is made (or reused) in `options.out` first. Writes
    generalization.json / .md / .png to `options.out`."""
    options, generalization, probing = _configs(
        "generalize", options=options, generalization=generalization, probing=probing
    )
    if from_run is None:
        run_dir = ensure_run(options, probing, model)
    else:
        run_dir = Path(from_run)
    store = ActivationStore.open(run_dir / "activations")
    records = AnswerRun.load(run_dir).records
    result = generalization_matrix(
        store,
        records,
        positions=generalization.positions,
        n_boot=probing.n_boot,
        progress=options.progress,
    )
    result.meta["from_run"] = str(run_dir)
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
