"""`tl-truth` command line: generate, run, steer, resample, select, generalize, patch, correct.

Each subcommand parses its flags into the configs of `tl_truth.config` (their defaults are the
flags' defaults), calls its job in `tl_truth.studies.jobs` and prints the result. A flag's
`dest` is `<config>.<field>` (e.g. `steering.alphas`), so every flag lands in one config field.
The flag groups and `configs_from_args` live in `tl_truth.cli_options`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tl_truth import parallel
from tl_truth.checkpoint import RunLock, RunLockedError
from tl_truth.cli_options import (
    _FOR_ITS_RUN,
    _correction,
    _Formatter,
    _generalization,
    _patching,
    _probing,
    _resampling,
    _run_options,
    _steering,
    configs_from_args,
)
from tl_truth.config import (
    SPLITS,
    defaults,
    parse_layers,  # noqa: F401  (`tl_truth.cli.parse_layers`, as before)
)
from tl_truth.parallel import SINGLE
from tl_truth.studies import jobs
from tl_truth.studies.jobs import finished_samples as _finished_samples  # noqa: F401 (old path)

# ---------------------------------------------------------------------------------------------
# Subcommands: call the job, print


def _markdown(result: Any) -> str:
    """The result as its saved .md reads: its title as a heading, then its tables."""
    title = result.title() if hasattr(result, "title") else None
    return (f"## {title}\n\n" if title else "") + result.to_markdown()


def cmd_generate(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    """`tl-truth generate`: answer and grade (`jobs.generate_job`), print per-task accuracy.

    Args:
        args: the parsed arguments (`build_parser`).
        cfg: the job's configs (`configs_from_args(args)`).

    Returns:
        The exit status (0).

    It loads the model `--model` names (a download), so the example is not run:

    >>> args = build_parser().parse_args(["generate", "--dataset", "capitals", "--limit", "8"])
    >>> cmd_generate(args, configs_from_args(args))  # doctest: +SKIP
    0
    """
    run = jobs.generate_job(**cfg)
    out = Path(cfg["options"].out)
    s = run.summary
    print(
        f"\n{s['model']['name']} ({s['model']['backend']}) on {s['dataset']['name']}: "
        f"{s['n']} answers"
    )
    print(f"{'task':<14}{'n':>6}{'accuracy':>10}{'refusals':>10}{'exact-ans':>11}")
    for task, b in s["per_task"].items():
        print(
            f"{task:<14}{b['n']:>6}{b['accuracy']:>10.3f}"
            f"{b['categories'].get('refusal', 0):>10}{b['exact_answer_rate']:>11.3f}"
        )
    print(f"exact-answer sources: {json.dumps(s['exact_answer_sources'])}")
    print(f"wrote {out / 'generations.jsonl'} and {out / 'summary.json'}")
    return 0


def cmd_run(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    """`tl-truth run`: the main job (`jobs.run_job`), print its report.

    Args:
        args: the parsed arguments (`build_parser`).
        cfg: the job's configs (`configs_from_args(args)`).

    Returns:
        The exit status (0).

    It loads the model `--model` names (a download), so the example is not run:

    >>> args = build_parser().parse_args(["run", "--dataset", "capitals", "--limit", "40", "--n-boot", "100"])
    >>> cmd_run(args, configs_from_args(args))  # doctest: +SKIP
    0
    """
    ranks = getattr(args, "ranks", None) or SINGLE  # set by `main` under torchrun
    cfg["options"] = parallel.rank_options(cfg["options"], ranks)
    report = jobs.run_job(**cfg, ranks=ranks)
    if report is None:
        return 0  # not rank 0: rank 0 writes and prints the report
    print()
    print(_markdown(report))
    out = Path(cfg["options"].out)
    print(f"Report: {out / 'report.md'} (also report.json, probe_grid.png, best_probe.*)")
    return 0


def cmd_steer(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    """`tl-truth steer`: the steering sweep (`jobs.steer_job`), print its table.

    Args:
        args: the parsed arguments (`build_parser`).
        cfg: the job's configs (`configs_from_args(args)`).

    Returns:
        The exit status (0).

    It loads the model `--model` names (a download), so the example is not run:

    >>> args = build_parser().parse_args(["steer", "--from-run", "runs/latest", "--alphas", "2,4"])
    >>> cmd_steer(args, configs_from_args(args))  # doctest: +SKIP
    0
    """
    result = jobs.steer_job(**cfg, probe=args.probe, from_run=args.from_run, samples=args.samples)
    print(_markdown(result))
    out = Path(cfg["options"].out)
    print(f"Report: {out / 'steering.md'} (also steering.json, steering.png)")
    return 0


def cmd_resample(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    """`tl-truth resample`: samples and error types (`jobs.resample_job`), print the summary.

    Args:
        args: the parsed arguments (`build_parser`).
        cfg: the job's configs (`configs_from_args(args)`).

    Returns:
        The exit status (0).

    It loads the model `--model` names (a download), so the example is not run:

    >>> args = build_parser().parse_args(["resample", "--from-run", "runs/latest", "--k", "10"])
    >>> cmd_resample(args, configs_from_args(args))  # doctest: +SKIP
    0
    """
    result = jobs.resample_job(**cfg, from_run=args.from_run)
    print("\n" + result.to_markdown())
    print(f"wrote {result.out / 'samples.jsonl'}, resample_summary.json, error_types.json/md/png")
    return 0


def cmd_select(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    """`tl-truth select`: answer selection among samples (`jobs.select_job`), print its table.

    Args:
        args: the parsed arguments (`build_parser`).
        cfg: the job's configs (`configs_from_args(args)`).

    Returns:
        The exit status (0).

    Samples already on disk need no model:

    >>> import contextlib, io, tempfile
    >>> from tl_truth.studies import Resampling, SampleSet
    >>> def rec(answer, i=0):
    ...     ok = answer == "Paris"
    ...     return {"task": "t", "id": "q", "split": "test", "question": "Capital of France?",
    ...             "gold": "Paris", "answer": answer, "exact_answer": answer, "correct": ok,
    ...             "category": "correct" if ok else "incorrect", "sample_index": i}
    >>> with tempfile.TemporaryDirectory() as d:
    ...     scored = [{**rec("Paris"), "probe_score": 0.9}, {**rec("Lyon", 1), "probe_score": 0.2}]
    ...     samples = Resampling([SampleSet(rec("Lyon"), scored)])
    ...     _ = samples.save(f"{d}/samples")
    ...     args = build_parser().parse_args(["select", "--samples", f"{d}/samples", "--out", d])
    ...     with contextlib.redirect_stdout(io.StringIO()) as printed:
    ...         rc = cmd_select(args, configs_from_args(args))
    >>> rc, printed.getvalue().startswith("## Answer selection")
    (0, True)
    """
    result = jobs.select_job(**cfg, samples=args.samples, from_run=args.from_run)
    print(_markdown(result))
    out = Path(cfg["options"].out)
    print(f"Report: {out / 'selection.md'} (also selection.json, selection.png)")
    return 0


def cmd_generalize(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    """`tl-truth generalize`: the cross-task matrix (`jobs.generalize_job`), print its tables.

    Args:
        args: the parsed arguments (`build_parser`).
        cfg: the job's configs (`configs_from_args(args)`).

    Returns:
        The exit status (0).

    It loads the model `--model` names (a download), so the example is not run:

    >>> args = build_parser().parse_args(["generalize", "--from-run", "runs/tasks"])
    >>> cmd_generalize(args, configs_from_args(args))  # doctest: +SKIP
    0
    """
    result = jobs.generalize_job(**cfg, from_run=args.from_run)
    print(_markdown(result))
    out = Path(cfg["options"].out)
    print(f"Report: {out / 'generalization.md'} (also generalization.json, generalization.png)")
    return 0


def cmd_patch(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    """`tl-truth patch`: the patching study (`jobs.patch_job`), print its table.

    Args:
        args: the parsed arguments (`build_parser`).
        cfg: the job's configs (`configs_from_args(args)`).

    Returns:
        The exit status (0).

    It loads the model `--model` names (a download), so the example is not run:

    >>> args = build_parser().parse_args(["patch", "--samples", "runs/resample"])
    >>> cmd_patch(args, configs_from_args(args))  # doctest: +SKIP
    0
    """
    study = jobs.patch_job(**cfg, samples=args.samples, probe=args.probe, from_run=args.from_run)
    print(_markdown(study))
    out = Path(cfg["options"].out)
    print(
        f"Report: {out / 'patching.md'} (also patching.json, patching_average.png, "
        "patching_examples/)"
    )
    return 0


def cmd_correct(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    """`tl-truth correct`: probe-guided answer choice (`jobs.correct_job`), print its table.

    Args:
        args: the parsed arguments (`build_parser`).
        cfg: the job's configs (`configs_from_args(args)`).

    Returns:
        The exit status (0).

    It loads the model `--model` names (a download), so the example is not run:

    >>> args = build_parser().parse_args(["correct", "--from-run", "runs/latest", "--k", "5"])
    >>> cmd_correct(args, configs_from_args(args))  # doctest: +SKIP
    0
    """
    result = jobs.correct_job(**cfg, from_run=args.from_run, samples=args.samples)
    print(_markdown(result))
    out = Path(cfg["options"].out)
    print(
        f"Report: {out / 'correction.md'} (also correction.json, .png, correction_questions.jsonl)"
    )
    return 0


def _subcommand(
    sub: Any, name: str, func: Callable[..., int], help: str, dataset_help: str = ""
) -> tuple[argparse.ArgumentParser, dict[str, Any]]:
    d = defaults(name)
    p = sub.add_parser(name, help=help, description=help, formatter_class=_Formatter)
    _run_options(p, d["options"], dataset_help)
    p.set_defaults(func=func)
    return p, d


def build_parser() -> argparse.ArgumentParser:
    """The `tl-truth` parser: one subcommand per job, one flag per config field.

    Returns:
        The `argparse.ArgumentParser`; each flag's `dest` is `<config>.<field>`.

    >>> args = build_parser().parse_args(["steer", "--alphas", "2,4", "--limit", "8"])
    >>> args.command, getattr(args, "steering.alphas"), getattr(args, "options.limit")
    ('steer', '2,4', 8)
    """
    parser = argparse.ArgumentParser(prog="tl-truth", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _subcommand(sub, "generate", cmd_generate, "answer, grade and locate exact answers")

    r, d = _subcommand(sub, "run", cmd_run, "generate + capture + probe grid + baselines -> report")
    _probing(r, d["probing"])
    r.add_argument("--nproc", type=int, default=1, help=parallel.NPROC_HELP)

    st, d = _subcommand(
        sub,
        "steer",
        cmd_steer,
        "add probe directions to the residual stream, judged on correctness against random "
        "directions",
    )
    st.add_argument("--probe", default=None, help="a saved probe (path without extension)")
    st.add_argument(
        "--from-run",
        default=None,
        help="a `tl-truth run` output directory (with neither, a run is made in OUT/run)",
    )
    st.add_argument(
        "--samples",
        default=None,
        help="a `tl-truth resample` directory for the contrastive family (None: its train "
        "questions answered wrong are resampled into OUT/contrastive_samples)",
    )
    _steering(st, d["steering"])
    _resampling(st, d["resampling"], " (contrastive family, without --samples)")
    _probing(st, d["probing"], ("n_boot", "p_true", "locate", "n_perm"), _FOR_ITS_RUN)

    rs, d = _subcommand(
        sub,
        "resample",
        cmd_resample,
        "K sampled answers per question, clustered; pass@K and error types",
    )
    _resampling(rs, d["resampling"])
    rs.add_argument(
        "--from-run",
        default=None,
        help="a `tl-truth run` directory: reuse its greedy answers, score every sample with "
        "its best probe, and fit a probe per error type on its activations (default: make "
        "one in OUT/run)",
    )
    _probing(rs, d["probing"], note=_FOR_ITS_RUN)

    se, d = _subcommand(
        sub,
        "select",
        cmd_select,
        "greedy vs random vs majority vote vs probe-chosen sample (with CIs)",
        dataset_help=" (given, and no --samples: resample into --out first)",
    )
    se.add_argument("--samples", default=None, help="a `tl-truth resample` directory; None: --out")
    se.add_argument(
        "--split",
        dest="selection.split",
        default=d["selection"].split,
        choices=SPLITS,
        help="questions to evaluate (the probe trained on the run's train split)",
    )
    _resampling(se, d["resampling"])
    se.add_argument("--from-run", default=None, help="with --dataset: the run to resample with")
    _probing(se, d["probing"], note=_FOR_ITS_RUN)

    ge, d = _subcommand(
        sub,
        "generalize",
        cmd_generalize,
        "train the probe on task A, test on task B: the AUC matrix",
    )
    ge.add_argument(
        "--from-run",
        default=None,
        help="a `tl-truth run` directory with several tasks (else runs one)",
    )
    _probing(
        ge, d["probing"], ("hooks", "layers", "n_boot", "p_true", "locate", "n_perm"), _FOR_ITS_RUN
    )
    _generalization(ge, d["generalization"])

    pa, d = _subcommand(
        sub,
        "patch",
        cmd_patch,
        "patch the right sample into the wrong greedy answer, read probe and answer logit",
    )
    pa.add_argument(
        "--samples",
        default=None,
        help="a `tl-truth resample` directory; None: resample --dataset into OUT/samples",
    )
    pa.add_argument("--probe", default=None, help="a saved probe (path without extension)")
    pa.add_argument(
        "--from-run",
        default=None,
        help="use this run's best probe; None: that of the run that scored the samples",
    )
    _patching(pa, d["patching"])
    _resampling(pa, d["resampling"], note=" (without --samples)")
    _probing(pa, d["probing"], ("n_boot", "p_true", "locate", "n_perm"), _FOR_ITS_RUN)

    co, d = _subcommand(
        sub,
        "correct",
        cmd_correct,
        "force k candidate answers, answer with the one the run's probe trusts most (vs greedy, "
        "the most likely candidate and selection among samples, with CIs)",
        dataset_help=" (default: the dataset the run answered)",
    )
    co.add_argument("--from-run", default=None, help="a finished `tl-truth run` directory")
    co.add_argument("--samples", default=None, help="a `tl-truth resample` directory (optional)")
    _correction(co, d["correction"])
    return parser


class _PrintHandler(logging.Handler):
    """The jobs' notes ("reusing ...") on stdout, next to the results."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record))


def _log_to_stdout() -> None:
    logger = logging.getLogger(jobs.__name__)
    if not any(isinstance(h, _PrintHandler) for h in logger.handlers):
        logger.addHandler(_PrintHandler())
    logger.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    """Run `tl-truth` with these arguments.

    Under torchrun, `run` is data parallel (`tl_truth.parallel`); `run --nproc N` starts
    those N processes itself.

    Args:
        argv: the arguments (None: `sys.argv[1:]`).

    Returns:
        The exit status: 0, or 2 for an error the user can fix (printed on stderr).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     main(["select", "--out", d])  # no samples there: a clear error
    2
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    _log_to_stdout()
    if getattr(args, "nproc", 1) > 1 and not parallel.under_torchrun():  # start N workers
        return parallel.launch(argv, args.nproc, getattr(args, "options.threads"))
    ranks = SINGLE
    try:
        ranks = args.ranks = parallel.worker_ranks(args.command, getattr(args, "options.device"))
        out = getattr(args, "options.out", None)
        with RunLock(out, ranks) if out else contextlib.nullcontext():  # one run per --out
            return args.func(args, configs_from_args(args))
    except (ValueError, FileNotFoundError, ImportError, RunLockedError) as e:
        hint = ""
        if isinstance(e, ImportError) and e.name == "datasets":
            hint = " (the hub loaders need it: pip install 'tl_truth[hub]')"
        print(f"tl-truth: error: {e}{hint}", file=sys.stderr)
        return 2
    finally:
        if ranks.parallel:
            parallel.stop()


if __name__ == "__main__":
    sys.exit(main())
