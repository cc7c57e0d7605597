"""The jobs on one run: `generate`, `run` (the main job), the run other jobs need, `generalize`.

`generate_job` answers and grades; `run_job` is the main job (`run_all`: answers, activations,
probe grid, baselines, controls). `finished_run` / `ensure_run` let a study reuse a finished
run with the same questions, model, generation settings, hooks and positions instead of
making it again. `generalize_job` reads one run holding several tasks (making it first when
none is given). They live together because each is a single run, made or read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tl_truth.answers.generation import same_generation_settings
from tl_truth.answers.prompts import parse_format
from tl_truth.answers.run import AnswerRun, answer_questions
from tl_truth.config import GeneralizeConfig, ProbeConfig, RunOptions
from tl_truth.data.questions import QADataset
from tl_truth.models import ModelInfo, model_info
from tl_truth.parallel import Ranks
from tl_truth.probing.activations import ActivationStore
from tl_truth.studies.generalization import GeneralizationResult, generalization_matrix
from tl_truth.studies.job_setup import _configs, _lazy, _questions, log
from tl_truth.studies.main_job import ProbeReport, run_all

# ---------------------------------------------------------------------------------------------
# generate, run, and the run other jobs need


def generate_job(options: RunOptions | None = None, model: Any = None) -> AnswerRun:
    """`tl-truth generate`: answer, grade and locate exact answers.

    Args:
        options: the model, questions and generation settings (None: the defaults).
        model: the model to use (None: loaded from `options`).

    Returns:
        The `AnswerRun`, also written to `options.out` (generations.jsonl, summary.json).

    >>> import tempfile
    >>> import tl_truth as tt
    >>> from tl_truth.testing import tiny_model
    >>> model = tiny_model("llama")
    >>> with tempfile.TemporaryDirectory() as d:
    ...     opts = tt.RunOptions(dataset="capitals", limit=2, out=d, max_new_tokens=3, quiet=True)
    ...     run = generate_job(opts, model=model)
    ...     files = sorted(p.name for p in Path(d).iterdir())
    >>> len(run.records), files
    (2, ['generations.jsonl', 'summary.json'])
    """
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
    ranks: Ranks | None = None,
) -> ProbeReport | None:
    """`tl-truth run`: generate, capture, probe grid, baselines, controls -> one report.

    Finished generations and activation shards in `options.out` are reused.

    Args:
        options: the model, questions, output directory and generation settings.
        probing: the hooks, layers and positions to probe, CIs and controls.
        model: the model to use (None: loaded from `options`).
        dataset: the questions if already loaded (default: `options.dataset`,
            `options.limit`).
        ranks: this process's place in a data-parallel run (`tl_truth.parallel`; None: one
            process); see `run_all`.

    Returns:
        The `ProbeReport`, written to `options.out` (report.json / .md, probe_grid.png,
        best_probe.* when a cell was selected); None on the ranks other than 0.

    >>> import tempfile
    >>> import tl_truth as tt
    >>> from tl_truth.testing import tiny_model
    >>> model = tiny_model("llama")
    >>> probing = tt.ProbeConfig(layers="1", n_boot=10, p_true=False, n_perm=0)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     opts = tt.RunOptions(dataset="capitals", limit=4, out=d, max_new_tokens=3, quiet=True)
    ...     report = run_job(opts, probing, model=model)
    >>> report.grid.hooks, report.summary["n"]
    (['blocks.1.hook_resid_post'], 4)
    """
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
        ranks=ranks,
        fused_capture=probing.capture == "fused",
    )


def finished_run(
    run_dir: str | Path,
    dataset: QADataset,
    options: RunOptions,
    probing: ProbeConfig,
    info: ModelInfo,
) -> bool:
    """Whether `run_dir` holds a finished run a study can reuse.

    Its bootstrap and p(True) settings may differ: they do not change the probe.

    Args:
        run_dir: a `tl-truth run` output directory.
        dataset: the questions it must hold (in order).
        options: the generation settings it must have used.
        probing: the hooks and positions it must have captured, and the locate rule.
        info: the model it must come from (`model_info`).

    Returns:
        True if it holds report.json, best_probe.json and generations.jsonl of these
        questions, model, generation settings, hooks and positions.

    >>> import tempfile
    >>> import tl_truth as tt
    >>> from tl_truth.testing import tiny_model
    >>> model = tiny_model("llama")
    >>> with tempfile.TemporaryDirectory() as d:
    ...     finished_run(d, tt.load_questions("capitals", 2), tt.RunOptions(),
    ...                  tt.ProbeConfig(), tt.model_info(model))
    False
    """
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
    """The run in `options.out`: reused if finished (`finished_run`), else made by `run_job`.

    Args:
        options: the run's options (its output directory is `options.out`).
        probing: its probe grid settings (None: `ProbeConfig()`).
        model: the model (None: loaded from `options` when the run must be made).
        dataset: the questions if already loaded.

    Returns:
        The run's directory.

    >>> import tempfile
    >>> import tl_truth as tt
    >>> from tl_truth.testing import tiny_model
    >>> model = tiny_model("llama")
    >>> probing = tt.ProbeConfig(layers="1", n_boot=10, p_true=False, n_perm=0)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     opts = tt.RunOptions(dataset="capitals", limit=4, out=d, max_new_tokens=3, quiet=True)
    ...     made = (ensure_run(opts, probing, model=model) / "report.json").exists()
    >>> made
    True
    """
    probing = probing or ProbeConfig()
    dataset = _questions(options, dataset)
    lazy = _lazy(options, model)
    run_dir = Path(options.out)
    if finished_run(run_dir, dataset, options, probing, model_info(lazy.get())):
        log.info(f"reusing the run in {run_dir}")
    else:
        run_job(options, probing, lazy, dataset)
    return run_dir


# ---------------------------------------------------------------------------------------------
# generalize, patch


def generalize_job(
    options: RunOptions | None = None,
    generalization: GeneralizeConfig | None = None,
    from_run: str | Path | None = None,
    probing: ProbeConfig | None = None,
    model: Any = None,
) -> GeneralizationResult:
    """`tl-truth generalize`: the train-task x test-task AUC matrix of one run of several tasks.

    Args:
        options: the run's options (several tasks in `options.dataset`) and where to write.
        generalization: the candidate positions of each task's probe.
        from_run: a finished run holding several tasks (None: made, or reused, in
            `options.out` first).
        probing: the grid settings of the run it makes.
        model: the model (None: loaded from `options` when a run must be made).

    Returns:
        The `GeneralizationResult`, written to `options.out` (generalization.json / .md /
        .png).

    A tiny random model answers nothing right, so no task gets a probe here:

    >>> import tempfile
    >>> import tl_truth as tt
    >>> from tl_truth.testing import tiny_model
    >>> model = tiny_model("llama")
    >>> probing = tt.ProbeConfig(layers="1", n_boot=10, p_true=False, n_perm=0)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     opts = tt.RunOptions(dataset="capitals,elements", limit=4, out=d, max_new_tokens=3,
    ...                          quiet=True)
    ...     result = generalize_job(opts, probing=probing, model=model)
    >>> result.tasks, result.cells["capitals"]["n_train_correct"]
    (['capitals', 'elements'], 0)
    """
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
