"""What every job of `tl_truth.studies.jobs` shares: the model, the configs, the questions.

A job loads its model only when it first needs one (`_LazyModel`, so a job that finds its
outputs finished never loads it), fills in the configs it was not given from its subcommand's
defaults (`_configs`), loads the questions its options name (`_questions`) and writes what it
makes first into a subdirectory of its output (`_in`: `RUN_DIR`, `SAMPLES_DIR`). The probe a
job reads comes from a finished run (`run_probe`) or is given (`_given_probe`). This module
exists so the job families (`run_jobs`, `sample_jobs`, `intervention_jobs`) share one copy of
that plumbing; the jobs' progress notes all go to the `tl_truth.studies.jobs` logger (`log`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from tl_truth.config import RunOptions, defaults
from tl_truth.data.load import load_questions
from tl_truth.data.questions import QADataset
from tl_truth.models import ModelInfo, load_model
from tl_truth.probing.probe import Probe
from tl_truth.result_io import read_json_file

# One logger for every job module: `tl-truth` prints the notes of `tl_truth.studies.jobs`.
log = logging.getLogger("tl_truth.studies.jobs")

RUN_DIR = "run"  # where steer / resample put the run they make: <out>/run
SAMPLES_DIR = "samples"  # where patch puts the samples it makes: <out>/samples


# ---------------------------------------------------------------------------------------------
# The model, loaded once and only when a job needs it


def load_model_for(options: RunOptions) -> Any:
    """The model the options name (torch threads set first: loading is CPU work too).

    Args:
        options: `model`, `backend`, `device`, `compat`, `dtype`, `device_map`,
            `max_memory`, `n_devices` and `threads` are read.

    Returns:
        The loaded model (`tl_truth.models.load_model`).

    >>> from tl_truth.config import RunOptions
    >>> model = load_model_for(RunOptions(model="gemma-3-270m"))  # doctest: +SKIP
    """
    _set_threads(options)
    return load_model(
        options.model,
        backend=options.backend,
        device=options.device,
        compatibility_mode=options.compat,
        dtype=options.dtype,
        device_map=parse_device_map(options.device_map),
        max_memory=parse_max_memory(options.max_memory),
        n_devices=options.n_devices,
    )


def parse_device_map(text: str | None) -> str | dict | None:
    """`--device-map`: a strategy name, a JSON object, or a JSON file holding one.

    >>> parse_device_map("auto"), parse_device_map('{"model.layers.0": 0, "lm_head": 1}')
    ('auto', {'model.layers.0': 0, 'lm_head': 1})
    """
    if text is None or text in ("auto", "balanced", "balanced_low_0", "sequential"):
        return text
    import json
    from pathlib import Path

    if text.lstrip().startswith("{"):
        return json.loads(text)
    if Path(text).is_file():
        return json.loads(Path(text).read_text())
    raise ValueError(
        f"--device-map {text!r}: expected auto, balanced, sequential, a JSON object or a JSON file"
    )


def parse_max_memory(text: str | None) -> dict | None:
    """`--max-memory 0=70GiB,1=70GiB,cpu=200GiB` -> {0: "70GiB", 1: "70GiB", "cpu": "200GiB"}.

    >>> parse_max_memory("0=70GiB,cpu=200GiB")
    {0: '70GiB', 'cpu': '200GiB'}
    """
    if not text:
        return None
    out: dict = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"--max-memory {text!r}: expected DEVICE=SIZE,... e.g. 0=70GiB")
        out[int(key) if key.strip().isdigit() else key.strip()] = value.strip()
    return out


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


def run_probe(run_dir: str | Path, info: ModelInfo | None = None) -> Probe:
    """The best probe a `tl-truth run` saved (trained on its train split).

    Args:
        run_dir: a `tl-truth run` output directory.
        info: the model it must fit (None: not checked).

    Returns:
        The `Probe` (FileNotFoundError if the run saved none: no cell could be selected).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     run_probe(d)
    Traceback (most recent call last):
    ...
    FileNotFoundError: ... has no best_probe.json: run `tl-truth run` first
    """
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


def run_cell(run_dir: str | Path) -> dict:
    """The probe cell a `tl-truth run` selected (report.json `best`, else `selected.any`).

    Args:
        run_dir: a `tl-truth run` output directory.

    Returns:
        The cell: `hook`, `layer`, `position` and its test AUC.

    Raises:
        FileNotFoundError: no report.json / activations there (the message names the fix).
        ValueError: the run selected no cell.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     run_cell(d)
    Traceback (most recent call last):
    ...
    FileNotFoundError: ... has no report.json: give --from-run the --out directory of a finished `tl-truth run` (or make one: tl-truth run --out ...)
    """
    run_dir = Path(run_dir)
    for name in ("report.json", "generations.jsonl", "activations"):
        if not (run_dir / name).exists():
            raise FileNotFoundError(
                f"{run_dir} has no {name}: give --from-run the --out directory of a finished "
                f"`tl-truth run` (or make one: tl-truth run --out {run_dir})"
            )
    report = read_json_file(run_dir / "report.json")
    best = report.get("best") or (report.get("selected") or {}).get("any")
    if not best:
        raise ValueError(
            f"the run in {run_dir} has no selected probe cell (too few right or wrong answers "
            "to fit one): make a run on more questions"
        )
    return best
