"""The sampling jobs: `resample` (K samples, error types, sampling baselines) and `select`.

`resample_job` draws K samples per question next to a run's greedy answer, scores every one
with the run's best probe, and reports the error types and the black-box sampling baselines;
`select_job` reads those samples and compares greedy decoding, a random sample, majority vote
and the probe's choice. They share the samples on disk (`samples.jsonl`), reused when they
were made for the same questions and settings (`finished_samples`).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tl_truth.answers.generation import GenerationConfig, same_generation_settings
from tl_truth.answers.prompts import parse_format
from tl_truth.answers.run import AnswerRun
from tl_truth.config import ProbeConfig, ResampleConfig, RunOptions, SelectConfig
from tl_truth.data.questions import QADataset
from tl_truth.models import ModelInfo, model_info
from tl_truth.probing.activations import ActivationStore
from tl_truth.probing.scoring import score_records
from tl_truth.results import json_safe, write_json
from tl_truth.studies.error_types import ErrorTypeReport, error_type_report
from tl_truth.studies.job_setup import RUN_DIR, _configs, _in, _lazy, _questions, log, run_probe
from tl_truth.studies.resampling import SAMPLES_FILE, Resampling, resample
from tl_truth.studies.run_jobs import ensure_run
from tl_truth.studies.sampling_baselines import compare_with_probe
from tl_truth.studies.selection import SelectionResult, select_answers

# resample's per-batch checkpoints in its output directory (removed once samples.jsonl is saved)
RESAMPLE_CHECKPOINTS = ("greedy.ckpt", "samples.ckpt")

# ---------------------------------------------------------------------------------------------
# resample -> error types -> select


@dataclass
class ResampleResult:
    """What `resample_job` made: the samples (scored by the run's probe) and their error types.

    Attributes:
        samples: the `Resampling`.
        error_types: the `ErrorTypeReport`.
        out: the directory it was written to.
        from_run: the run whose greedy answers, probe and activations were used.
        sampling_baselines: the black-box sampling baselines vs the probe
            (`studies.sampling_baselines.compare_with_probe`), or None.

    >>> from pathlib import Path
    >>> from tl_truth.studies import SampleSet
    >>> def rec(answer_ids, span, correct, exact, i=0):
    ...     return {"task": "t", "id": "q", "split": "test", "question": "Capital of France?",
    ...             "gold": "Paris", "answer": exact, "exact_answer": exact, "correct": correct,
    ...             "category": "correct" if correct else "incorrect", "sample_index": i,
    ...             "prompt_token_ids": [1, 5, 9, 30, 40], "answer_token_ids": answer_ids,
    ...             "exact_answer_token_span": [5 + span[0], 5 + span[1]]}
    >>> wrong = rec([50, 60, 70, 71, 80], (2, 4), False, "Lyon")
    >>> right = rec([50, 55, 60, 90, 80, 81], (3, 4), True, "Paris", i=1)
    >>> res = Resampling([SampleSet(wrong, [right, wrong])])
    >>> result = ResampleResult(res, error_type_report(res.sets), Path("out"), Path("out/run"))
    >>> result.to_markdown().splitlines()[0]
    '1 questions x K=2: greedy accuracy 0.0, sample accuracy 0.5, pass@K 1.0'
    """

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
    """The samples already in `out`, if they were made for these questions and settings.

    Args:
        out: a `tl-truth resample` output directory.
        dataset: the questions they must be of (in order).
        info: the model they must come from.
        sample_cfg: the sampling settings they must have used.

    Returns:
        The `Resampling`, or None if `out` holds none (ValueError if it holds samples made
        for other questions, model or settings).

    >>> import tempfile
    >>> import tl_truth as tt
    >>> from tl_truth.testing import tiny_model
    >>> with tempfile.TemporaryDirectory() as d:
    ...     finished_samples(d, tt.load_questions("capitals", 2),
    ...                      tt.model_info(tiny_model("llama")), GenerationConfig()) is None
    True
    """
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


def samples_in(
    out: str | Path,
    model: Any,
    dataset: QADataset,
    run: AnswerRun,
    options: RunOptions,
    resampling: ResampleConfig,
) -> Resampling:
    """K samples per question of `dataset`, drawn like `run`'s greedy answers, kept in `out`.

    Samples already in `out` for these questions, model and settings are reused; otherwise
    they are drawn with per-batch checkpoints in `out` (a killed call resumes where it
    stopped), saved, and the checkpoints removed. Shared by `tl-truth resample` and the
    contrastive steering families.

    Args:
        out: the directory samples.jsonl goes to.
        model: the model.
        dataset: the questions to sample.
        run: the run whose greedy answers the samples sit next to (its answer length and
            locate rule are reused: samples must be generated like the greedy answers).
        options: batch size, prompt format, extraction and progress settings.
        resampling: K, the temperature and the seed.

    Returns:
        The `Resampling` (saved in `out`).
    """
    out = Path(out)
    info = model_info(model)
    max_new = run.summary.get("generation", {}).get("max_new_tokens", options.max_new_tokens)
    config = GenerationConfig(
        max_new_tokens=max_new, batch_size=options.batch_size, seed=resampling.seed
    )
    sample_cfg = GenerationConfig(
        **{**vars(config), "temperature": resampling.temperature, "num_samples": resampling.k}
    )
    res = finished_samples(out, dataset, info, sample_cfg)
    if res is not None:
        return res
    log.info(f"sampling {len(dataset)} questions, K={resampling.k}, into {out}")
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
        checkpoint_dir=out,
    )
    res.meta["model"] = info.to_dict()
    res.save(out)  # the slow part is kept even if what follows fails
    for sub in RESAMPLE_CHECKPOINTS:  # stored now: the checkpoints can go
        shutil.rmtree(out / sub, ignore_errors=True)
    return res


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

    Args:
        options: the model, questions, output directory and generation settings.
        resampling: K, the temperature and the seed.
        from_run: a finished `tl-truth run` directory (None: made in `<out>/run`).
        probing: the grid settings of the run it makes.
        model: the model (None: loaded from `options`).

    Returns:
        The `ResampleResult`.

    It needs a run whose probe could be fit (right and wrong answers: a real model), so
    this example is not run:

    >>> import tl_truth as tt
    >>> opts = tt.RunOptions.for_command("resample", dataset="capitals", limit=100,
    ...                                  out="runs/resample")
    >>> result = resample_job(opts, tt.ResampleConfig(k=10))  # doctest: +SKIP
    >>> result.samples.summary()["pass_at_k_greedy_wrong"]  # doctest: +SKIP
    0.41
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
    probe = run_probe(run_dir, info)
    res = samples_in(out, model, dataset, run, options, resampling)
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

    Args:
        options: where to write (and, to resample first, the model and questions).
        selection: the questions evaluated (`split`).
        samples: a `tl-truth resample` directory (None: `options.out`).
        resampling: K, temperature and seed, to resample first.
        from_run: the run to resample with.
        probing: the bootstrap replicates (and the grid of a run it makes).
        model: the model (None: loaded from `options` only if it resamples).

    Returns:
        The `SelectionResult` (without a probe row when the samples hold no probe scores).

    Samples already on disk need no model:

    >>> import tempfile
    >>> import tl_truth as tt
    >>> from tl_truth.studies import SampleSet
    >>> def rec(answer_ids, span, correct, exact, i=0):
    ...     return {"task": "t", "id": "q", "split": "test", "question": "Capital of France?",
    ...             "gold": "Paris", "answer": exact, "exact_answer": exact, "correct": correct,
    ...             "category": "correct" if correct else "incorrect", "sample_index": i,
    ...             "prompt_token_ids": [1, 5, 9, 30, 40], "answer_token_ids": answer_ids,
    ...             "exact_answer_token_span": [5 + span[0], 5 + span[1]]}
    >>> wrong = rec([50, 60, 70, 71, 80], (2, 4), False, "Lyon")
    >>> right = rec([50, 55, 60, 90, 80, 81], (3, 4), True, "Paris", i=1)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     scored = [{**right, "probe_score": 0.9}, {**wrong, "probe_score": 0.2}]
    ...     samples = Resampling([SampleSet(wrong, scored)]).save(f"{d}/samples")
    ...     opts = tt.RunOptions(dataset=None, out=f"{d}/select", quiet=True)
    ...     result = select_job(opts, samples=samples)
    >>> result.accuracy["greedy"]["value"], result.accuracy["probe"]["value"]
    (0.0, 1.0)
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
