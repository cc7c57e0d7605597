"""The `correct` job: probe-guided answer choice on a finished `tl-truth run`.

`correct_job` reads a run directory (report.json's selected cell, the activation store, the
greedy answers and the questions they answered), refits the correctness probe there on the
train split (`probes_from_store`, as `steer` does), checks that the loaded model is the run's,
and runs `probe_guided_choice` on the run's test questions. Finished batches of questions are
checkpointed in the output directory (`correct.ckpt.jsonl`), so a killed job resumes there.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tl_truth.answers.run import AnswerRun, clear_checkpoints
from tl_truth.config import CorrectConfig, RunOptions
from tl_truth.data.load import load_questions
from tl_truth.data.questions import QADataset
from tl_truth.intervention.store_probes import probes_from_store
from tl_truth.models import ModelInfo, model_info
from tl_truth.probing.activations import ActivationStore
from tl_truth.probing.probe import Probe
from tl_truth.result_io import read_json_file
from tl_truth.studies.correction import probe_guided_choice
from tl_truth.studies.correction_result import CorrectionResult
from tl_truth.studies.job_setup import _configs, _lazy, run_cell
from tl_truth.studies.resampling import SAMPLES_FILE, Resampling

CHECKPOINT = "correct.ckpt.jsonl"


def check_run_model(run_dir: str | Path, info: ModelInfo) -> None:
    """Raise ValueError naming the flags to fix when the loaded model is not the run's.

    Args:
        run_dir: a `tl-truth run` output directory (its report.json names the model).
        info: the loaded model's `ModelInfo`.

    >>> import json, tempfile
    >>> a = ModelInfo("m", "bridge", "hf", "f1", 2, 32, False)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = (Path(d) / "report.json").write_text(json.dumps({"model": a.to_dict()}))
    ...     check_run_model(d, a)
    ...     check_run_model(d, ModelInfo("x", "hooked", "hf", "f2", 2, 32, False))
    Traceback (most recent call last):
    ...
    ValueError: the run in ... was made with model 'm' (backend bridge, hf weights), not the loaded 'x' (fingerprint: 'f1' != 'f2'; backend: 'bridge' != 'hooked'): load the run's model: --model m --backend bridge
    """
    theirs = (read_json_file(Path(run_dir) / "report.json") or {}).get("model")
    if not theirs:
        return
    run_info = ModelInfo(**{k: theirs.get(k) for k in ModelInfo.__dataclass_fields__})
    problems = run_info.differences(info)
    if problems:
        compat = " --compat" if run_info.processing == "compat" else ""
        raise ValueError(
            f"the run in {run_dir} was made with model {run_info.name!r} (backend "
            f"{run_info.backend}, {run_info.processing} weights), not the loaded {info.name!r} "
            f"({'; '.join(problems)}): load the run's model: --model {run_info.name} "
            f"--backend {run_info.backend}{compat}"
        )


def _run_questions(options: RunOptions, run: AnswerRun, run_dir: Path) -> QADataset:
    """The questions the run answered: `options.dataset`, else the dataset the run names."""
    spec = options.dataset or (run.summary.get("dataset") or {}).get("name")
    try:
        if not spec:
            raise ValueError("the run's summary.json names no dataset")
        return load_questions(spec)
    except (ValueError, FileNotFoundError) as e:
        raise ValueError(
            f"cannot reload the questions of the run in {run_dir} ({e}): give --dataset, the "
            "dataset the run answered"
        ) from e


# Positions that read the candidate's own tokens. At any other position (before the exact
# answer, the prompt) every candidate of a question gets the same activation, so the probe
# could only tie and the "choice" would silently be the likelihood's.
READS_CANDIDATE = ("exact_first", "exact_last", "after_exact")


def probe_position(cell: dict, position: str | None, captured: Sequence[str] | None = None) -> str:
    """The position the probe reads: `position`, else the run's cell if it reads the candidate.

    Args:
        cell: the run's selected cell (`run_cell`).
        position: the position asked for (None: decide from the cell).
        captured: the positions the run's store holds (None: any).

    Returns:
        `position`; else the cell's position if in `READS_CANDIDATE`; else "exact_last" if
        captured; else the cell's position (the result then reports the ties it gives).

    >>> probe_position({"position": "before_exact"}, None), probe_position({"position": "exact_first"}, None)
    ('exact_last', 'exact_first')
    """
    if position is not None:
        return position
    if cell["position"] in READS_CANDIDATE:
        return cell["position"]
    return "exact_last" if captured is None or "exact_last" in captured else cell["position"]


def _probe(run_dir: Path, cell: dict, position: str | None, info: ModelInfo) -> Probe:
    m = re.fullmatch(r"blocks\.(\d+)\.hook_(\w+)", cell["hook"])
    if m is None:
        raise ValueError(f"the run's selected cell {cell['hook']} is not a block's hook")
    store = ActivationStore.open(run_dir / "activations")
    layer, kind = int(m.group(1)), m.group(2)
    (probe, _), = probes_from_store(
        store, [layer], probe_position(cell, position, store.positions), hook_kind=kind, expect_model=info
    ).values()  # fmt: skip
    return probe


def correct_job(
    options: RunOptions | None = None,
    correction: CorrectConfig | None = None,
    from_run: str | Path | None = None,
    samples: str | Path | None = None,
    model: Any = None,
) -> CorrectionResult:
    """`tl-truth correct`: force each candidate answer, answer with the one the probe trusts.

    On the run's `correction.split` questions (the first `options.limit`), compares greedy
    decoding, the most likely of k candidates, the probe's choice among them, the probe's
    choice among K samples (`samples`) and the oracle, with paired bootstrap CIs. Answers are
    completed to the run's answer length, with its prompts. Writes correction.json / .md /
    .png and correction_questions.jsonl to `options.out`.

    Args:
        options: the model (it must be the run's), `limit`, `batch_size`, output directory;
            `dataset` only if the run's questions cannot be reloaded by the name it records.
        correction: k, the slot, the split, the probe's position, the bootstrap.
        from_run: a finished `tl-truth run` directory (required).
        samples: a `tl-truth resample` directory for `sample_selection` (None: null).
        model: the model (None: loaded from `options`).

    Returns:
        The `CorrectionResult`.

    It needs a run whose probe could be fit (right and wrong answers: a real model), so this
    example is not run:

    >>> import tl_truth as tt
    >>> opts = tt.RunOptions.for_command("correct", limit=30, out="runs/correct")
    >>> res = correct_job(opts, tt.CorrectConfig(k=5), from_run="runs/demo")  # doctest: +SKIP
    >>> res.accuracy["probe_choice"]["value"]  # doctest: +SKIP
    0.43
    """
    options, correction = _configs("correct", options=options, correction=correction)
    if from_run is None:
        raise ValueError("give --from-run DIR: the output directory of a finished `tl-truth run`")
    run_dir = Path(from_run)
    cell = run_cell(run_dir)
    lazy = _lazy(options, model)
    model = lazy.get()
    info = model_info(model)
    check_run_model(run_dir, info)
    run = AnswerRun.load(run_dir)
    dataset = _run_questions(options, run, run_dir)
    greedy = [
        r
        for r in run.records
        if r.get("sample_index", 0) == 0 and correction.split in ("all", r["split"])
    ]
    if options.limit:
        greedy = greedy[: options.limit]
    if not greedy:
        raise ValueError(f"the run in {run_dir} has no {correction.split} questions")
    probe = _probe(run_dir, cell, correction.position, info)
    res = None
    if samples is not None:
        if not (Path(samples) / SAMPLES_FILE).exists():
            raise FileNotFoundError(f"no samples in {samples}: give a `tl-truth resample` --out")
        res = Resampling.load(samples)
        fp = (res.meta.get("model") or {}).get("fingerprint")
        if fp not in (None, info.fingerprint):
            raise ValueError(f"the samples in {samples} come from another model than the run's")
    generation = run.summary.get("generation") or {}
    stop_nl = generation.get("stop_at_newline")
    if stop_nl is None:
        stop_nl = (run.summary.get("prompt_format") or {}).get("kind") == "plain"
    out = Path(options.out)
    result = probe_guided_choice(
        model,
        dataset,
        greedy,
        probe,
        k=correction.k,
        slot=correction.slot,
        max_new_tokens=generation.get("max_new_tokens", options.max_new_tokens),
        batch_size=options.batch_size,
        stop_at_newline=bool(stop_nl),
        samples=res,
        n_boot=correction.n_boot,
        seed=correction.seed,
        progress=options.progress,
        checkpoint=out / CHECKPOINT,
    )
    result.meta = {
        "from_run": str(run_dir),
        "samples": None if samples is None else str(samples),
        "model": info.to_dict(),
        "dataset": dataset.name,
        "split": correction.split,
        "slot": correction.slot,
        "run_cell": cell,
    }
    result.save(out)
    clear_checkpoints(out, [CHECKPOINT])
    return result
