"""`tl-truth` command line: generate, run, steer, resample, select, generalize, patch.

Each subcommand parses its flags into the configs of `tl_truth.config` (their defaults are the
flags' defaults), calls its job in `tl_truth.studies.jobs` and prints the result. A flag's
`dest` is `<config>.<field>` (e.g. `steering.alphas`), so every flag lands in one config field.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from tl_truth.config import (
    BACKENDS,
    SPLITS,
    UNITS,
    GeneralizeConfig,
    PatchConfig,
    ProbeConfig,
    ResampleConfig,
    RunOptions,
    SteeringConfig,
    defaults,
    parse_layers,  # noqa: F401  (`tl_truth.cli.parse_layers`, as before)
)
from tl_truth.intervention.steering import SCOPES
from tl_truth.models import BUILTIN_MODELS, HOOK_KINDS
from tl_truth.studies import jobs
from tl_truth.studies.jobs import finished_samples as _finished_samples  # noqa: F401 (old path)

# ---------------------------------------------------------------------------------------------
# Flags, by config: defaults from the subcommand's configs (`tl_truth.config.defaults`)


def _csv(value: Any) -> str | None:
    """A default as the comma-separated text the flag takes (None stays None)."""
    if value is None or isinstance(value, str):
        return value
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)


def _run_options(p: argparse.ArgumentParser, d: RunOptions, dataset_help: str = "") -> None:
    p.add_argument(
        "--model",
        dest="options.model",
        default=d.model,
        help=f"built-in ({', '.join(BUILTIN_MODELS)}), HF directory, .gguf file or hub id",
    )
    p.add_argument(
        "--backend",
        dest="options.backend",
        choices=BACKENDS,
        default=d.backend,
        help="TransformerBridge or HookedTransformer",
    )
    p.add_argument(
        "--compat",
        dest="options.compat",
        action="store_true",
        default=d.compat,
        help="TransformerBridge compatibility mode (HookedTransformer-style weights)",
    )
    p.add_argument(
        "--dataset",
        dest="options.dataset",
        default=d.dataset,
        help="built-in task(s), format:path, or a CSV/JSONL file; comma-separated" + dataset_help,
    )
    p.add_argument(
        "--limit",
        dest="options.limit",
        type=int,
        default=d.limit,
        help="questions per dataset part",
    )
    p.add_argument("--out", dest="options.out", default=d.out, help="output directory")
    p.add_argument(
        "--prompt",
        dest="options.prompt",
        default=d.prompt,
        help="auto | chat | qa | a template with {question}",
    )
    p.add_argument(
        "--max-new-tokens",
        dest="options.max_new_tokens",
        type=int,
        default=d.max_new_tokens,
        help="answer length limit in tokens",
    )
    p.add_argument(
        "--batch-size",
        dest="options.batch_size",
        type=int,
        default=d.batch_size,
        help="prompts per generation batch",
    )
    p.add_argument(
        "--model-extract",
        dest="options.model_extract",
        action=argparse.BooleanOptionalAction,
        default=d.model_extract,
        help="the model-based exact-answer extraction fallback (--no-model-extract: skip it)",
    )
    p.add_argument(
        "--device", dest="options.device", default=d.device, help="torch device; None: auto"
    )
    p.add_argument(
        "--threads", dest="options.threads", type=int, default=d.threads, help="torch CPU threads"
    )
    p.add_argument(
        "--quiet",
        dest="options.quiet",
        action="store_true",
        default=d.quiet,
        help="no progress bars",
    )


_FOR_ITS_RUN = " (for the run it makes when given no --from-run)"


def _probing(
    p: argparse.ArgumentParser,
    d: ProbeConfig,
    flags: tuple[str, ...] = (
        "hooks",
        "layers",
        "positions",
        "n_boot",
        "p_true",
        "locate",
        "n_perm",
    ),
    note: str = "",
) -> None:
    if "hooks" in flags:
        p.add_argument(
            "--hooks",
            dest="probing.hooks",
            default=_csv(d.hooks),
            help=f"hook kinds, comma-separated: {','.join(HOOK_KINDS)}" + note,
        )
    if "layers" in flags:
        p.add_argument(
            "--layers",
            dest="probing.layers",
            default=_csv(d.layers),
            help="all, every:K, or comma-separated indices" + note,
        )
    if "positions" in flags:
        p.add_argument(
            "--positions",
            dest="probing.positions",
            default=_csv(d.positions),
            help="comma-separated named positions; None: all" + note,
        )
    if "n_boot" in flags:
        p.add_argument(
            "--n-boot",
            dest="probing.n_boot",
            type=int,
            default=d.n_boot,
            help="bootstrap replicates for CIs",
        )
    if "p_true" in flags:
        p.add_argument(
            "--p-true",
            dest="probing.p_true",
            action=argparse.BooleanOptionalAction,
            default=d.p_true,
            help="score the p(True) baseline" + note,
        )
    if "locate" in flags:
        p.add_argument(
            "--locate",
            dest="probing.locate",
            choices=["blind", "paper"],
            default=d.locate,
            help="blind: find the exact answer without reading the gold (same procedure for "
            "right and wrong answers); paper: the gold alias of a correct answer first" + note,
        )
    if "n_perm" in flags:
        p.add_argument(
            "--n-perm",
            dest="probing.n_perm",
            type=int,
            default=d.n_perm,
            help="label permutations for the selected probe's null (0: none)" + note,
        )


def _resampling(p: argparse.ArgumentParser, d: ResampleConfig, note: str = "") -> None:
    p.add_argument(
        "--k",
        dest="resampling.k",
        type=int,
        default=d.k,
        help="samples per question (paper: 30)" + note,
    )
    p.add_argument(
        "--temperature",
        dest="resampling.temperature",
        type=float,
        default=d.temperature,
        help="sampling temperature" + note,
    )
    p.add_argument(
        "--seed", dest="resampling.seed", type=int, default=d.seed, help="sampling seed" + note
    )


def _steering(p: argparse.ArgumentParser, d: SteeringConfig) -> None:
    p.add_argument(
        "--layers",
        dest="steering.layers",
        default=_csv(d.layers),
        help="layers to steer; None: the run's best layer",
    )
    p.add_argument(
        "--alphas",
        dest="steering.alphas",
        default=_csv(d.alphas),
        help="strengths, comma-separated",
    )
    p.add_argument(
        "--units",
        dest="steering.units",
        choices=UNITS,
        default=d.units,
        help="alpha in SDs of the projection onto the direction, or absolute",
    )
    p.add_argument(
        "--scope", dest="steering.scope", default=d.scope, choices=SCOPES, help="tokens to push"
    )
    p.add_argument(
        "--n-random",
        dest="steering.n_random",
        type=int,
        default=d.n_random,
        help="random directions per setting",
    )
    p.add_argument(
        "--hook",
        dest="steering.hook_kind",
        choices=HOOK_KINDS,
        default=d.hook_kind,
        help="hook kind of the probes refitted from a run (and captured by the run steer makes)",
    )
    p.add_argument(
        "--train-limit",
        dest="steering.train_limit",
        type=int,
        default=d.train_limit,
        help="questions per dataset part for the run steer makes when given no --probe or "
        "--from-run; None: all (--limit counts the held-out test questions steered)",
    )


def _generalization(p: argparse.ArgumentParser, d: GeneralizeConfig) -> None:
    p.add_argument(
        "--positions",
        dest="generalization.positions",
        default=_csv(d.positions) or "all",
        help="candidate positions for each task's best cell (`all`: every captured one)",
    )


def _patching(p: argparse.ArgumentParser, d: PatchConfig) -> None:
    p.add_argument(
        "--layers",
        dest="patching.layers",
        default=_csv(d.layers),
        help="all, every:K, or comma-separated",
    )
    p.add_argument(
        "--hook",
        dest="patching.hook_kind",
        default=d.hook_kind,
        choices=HOOK_KINDS,
        help="where to patch (resid_pre: a layer's input)",
    )
    p.add_argument(
        "--split",
        dest="patching.split",
        default=d.split,
        choices=SPLITS,
        help="questions to patch",
    )
    p.add_argument(
        "--max-questions",
        dest="patching.max_questions",
        type=int,
        default=d.max_questions,
        help="at most this many questions; None: all",
    )


def configs_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The job's configs: the subcommand's defaults with every `<config>.<field>` flag applied."""
    configs = {}
    for name, default in defaults(args.command).items():
        given = {
            key.split(".", 1)[1]: value
            for key, value in vars(args).items()
            if key.startswith(name + ".")
        }
        configs[name] = replace(default, **given)
    return configs


# ---------------------------------------------------------------------------------------------
# Subcommands: call the job, print


def _markdown(result: Any) -> str:
    """The result as its saved .md reads: its title as a heading, then its tables."""
    title = result.title() if hasattr(result, "title") else None
    return (f"## {title}\n\n" if title else "") + result.to_markdown()


def cmd_generate(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
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
    report = jobs.run_job(**cfg)
    print()
    print(_markdown(report))
    out = Path(cfg["options"].out)
    print(f"Report: {out / 'report.md'} (also report.json, probe_grid.png, best_probe.*)")
    return 0


def cmd_steer(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    result = jobs.steer_job(**cfg, probe=args.probe, from_run=args.from_run)
    print(_markdown(result))
    out = Path(cfg["options"].out)
    print(f"Report: {out / 'steering.md'} (also steering.json, steering.png)")
    return 0


def cmd_resample(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    result = jobs.resample_job(**cfg, from_run=args.from_run)
    print("\n" + result.to_markdown())
    print(f"wrote {result.out / 'samples.jsonl'}, resample_summary.json, error_types.json/md/png")
    return 0


def cmd_select(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    result = jobs.select_job(**cfg, samples=args.samples, from_run=args.from_run)
    print(_markdown(result))
    out = Path(cfg["options"].out)
    print(f"Report: {out / 'selection.md'} (also selection.json, selection.png)")
    return 0


def cmd_generalize(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    result = jobs.generalize_job(**cfg, from_run=args.from_run)
    print(_markdown(result))
    out = Path(cfg["options"].out)
    print(f"Report: {out / 'generalization.md'} (also generalization.json, generalization.png)")
    return 0


def cmd_patch(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    study = jobs.patch_job(**cfg, samples=args.samples, probe=args.probe, from_run=args.from_run)
    print(_markdown(study))
    out = Path(cfg["options"].out)
    print(
        f"Report: {out / 'patching.md'} (also patching.json, patching_average.png, "
        "patching_examples/)"
    )
    return 0


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults; names a value after its flag (`--alphas ALPHAS`), not its dest."""

    def _get_default_metavar_for_optional(self, action: argparse.Action) -> str:
        return action.option_strings[0].lstrip("-").upper().replace("-", "_")


def _subcommand(
    sub: Any, name: str, func: Callable[..., int], help: str, dataset_help: str = ""
) -> tuple[argparse.ArgumentParser, dict[str, Any]]:
    d = defaults(name)
    p = sub.add_parser(name, help=help, description=help, formatter_class=_Formatter)
    _run_options(p, d["options"], dataset_help)
    p.set_defaults(func=func)
    return p, d


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tl-truth", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _subcommand(sub, "generate", cmd_generate, "answer, grade and locate exact answers")

    r, d = _subcommand(sub, "run", cmd_run, "generate + capture + probe grid + baselines -> report")
    _probing(r, d["probing"])

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
    _steering(st, d["steering"])
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
    args = build_parser().parse_args(argv)
    _log_to_stdout()
    try:
        return args.func(args, configs_from_args(args))
    except (ValueError, FileNotFoundError, ImportError) as e:
        hint = ""
        if isinstance(e, ImportError) and e.name == "datasets":
            hint = " (the hub loaders need it: pip install 'tl_truth[hub]')"
        print(f"tl-truth: error: {e}{hint}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
