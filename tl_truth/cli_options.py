"""The `tl-truth` flags, one group per config, and the way back from parsed flags to configs.

Each `_<config>(parser, default)` adds the flags of one config of `tl_truth.config` to a
subcommand's parser, with that subcommand's defaults (`tl_truth.config.defaults`) as the flags'
defaults; every flag's `dest` is `<config>.<field>` (e.g. `steering.alphas`), so
`configs_from_args` can rebuild the job's configs from the parsed arguments. The groups are
shared by several subcommands (`--k` by resample, select and patch, ...): they live here so
`tl_truth.cli` is only the subcommands, their printing and `main`.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from tl_truth.config import (
    BACKENDS,
    CAPTURE_PATHS,
    DIRECTION_FAMILIES,
    SLOTS,
    SPLITS,
    STEERING_FAMILIES,
    UNITS,
    CorrectConfig,
    GeneralizeConfig,
    PatchConfig,
    ProbeConfig,
    ResampleConfig,
    RunOptions,
    SteeringConfig,
    defaults,
)
from tl_truth.intervention.steering import SCOPES
from tl_truth.models import BUILTIN_MODELS, HOOK_KINDS

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
        "--dtype",
        dest="options.dtype",
        choices=("float32", "bfloat16", "float16"),
        default=d.dtype,
        help="model dtype (probes always fit in float32)",
    )
    p.add_argument(
        "--device-map",
        dest="options.device_map",
        default=d.device_map,
        help="bridge: HF device map for models bigger than one device: auto, balanced, "
        "sequential, a JSON object or a JSON file",
    )
    p.add_argument(
        "--max-memory",
        dest="options.max_memory",
        default=d.max_memory,
        help="with --device-map: memory per device, e.g. 0=70GiB,1=70GiB",
    )
    p.add_argument(
        "--n-devices",
        dest="options.n_devices",
        type=int,
        default=d.n_devices,
        help="hooked backend: split the blocks across this many GPUs",
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
        "capture",
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
    if "capture" in flags:
        p.add_argument(
            "--capture",
            dest="probing.capture",
            choices=CAPTURE_PATHS,
            default=d.capture,
            help="fused: read activations inside generation (no second forward pass); "
            "two_pass: run every answer through the model again" + note,
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
        help="strengths, comma-separated; None: 2,4,8 for the sweep, each family's default "
        "grid with --directions (steering_protocol)",
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
        "--direction",
        dest="steering.direction",
        choices=DIRECTION_FAMILIES,
        default=d.direction,
        help="direction family at each refitted probe's cell: the probe's weight vector or "
        "the mass-mean shift (right minus wrong class means)",
    )
    p.add_argument(
        "--directions",
        dest="steering.directions",
        default=_csv(d.directions),
        help=f"families to compare on held-out data ({','.join(STEERING_FAMILIES)}): each "
        "family's setting is chosen on --n-validation train questions, then tested once; "
        "None: the single-family sweep of --direction",
    )
    p.add_argument(
        "--family-alphas",
        dest="steering.family_alphas",
        default=None,
        help="per-family alpha grids with --directions, e.g. 'probe=4,16;heads=5,10'",
    )
    p.add_argument(
        "--scopes",
        dest="steering.scopes",
        default=_csv(d.scopes),
        help="scopes --directions chooses among (None: --scope)",
    )
    p.add_argument(
        "--ks",
        dest="steering.head_ks",
        default=_csv(d.head_ks),
        help="numbers of attention heads the heads family chooses among",
    )
    p.add_argument(
        "--n-validation",
        dest="steering.n_validation",
        type=int,
        default=d.n_validation,
        help="train questions held out of the directions' fit to choose settings on",
    )
    p.add_argument(
        "--protocol-seed",
        dest="steering.seed",
        type=int,
        default=d.seed,
        help="seeds the validation split, the random directions and the bootstrap",
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


def _correction(p: argparse.ArgumentParser, d: CorrectConfig) -> None:
    p.add_argument(
        "--k", dest="correction.k", type=int, default=d.k, help="candidates per question"
    )
    p.add_argument(
        "--slot",
        dest="correction.slot",
        choices=SLOTS,
        default=d.slot,
        help="where candidates branch off the greedy answer: at its exact answer (the text "
        "before it kept) or at its start",
    )
    p.add_argument(
        "--split", dest="correction.split", choices=SPLITS, default=d.split, help="questions"
    )
    p.add_argument(
        "--position",
        dest="correction.position",
        default=d.position,
        help="the probe's position (refitted at the run's layer); None: the run's selected one if it reads the candidate, else exact_last",
    )
    p.add_argument(
        "--n-boot",
        dest="correction.n_boot",
        type=int,
        default=d.n_boot,
        help="bootstrap replicates for CIs",
    )


def configs_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The job's configs: the subcommand's defaults with every `<config>.<field>` flag applied.

    Args:
        args: arguments parsed by `tl_truth.cli.build_parser()`.

    Returns:
        Job argument name (`options`, `probing`, `steering`, ...) -> config.

    >>> from tl_truth.cli import build_parser
    >>> cfg = configs_from_args(build_parser().parse_args(["steer", "--alphas", "2,4"]))
    >>> cfg["steering"].alphas, cfg["options"].max_new_tokens
    ((2.0, 4.0), 24)
    """
    configs = {}
    for name, default in defaults(args.command).items():
        given = {
            key.split(".", 1)[1]: value
            for key, value in vars(args).items()
            if key.startswith(name + ".")
        }
        configs[name] = replace(default, **given)
    return configs


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults; names a value after its flag (`--alphas ALPHAS`), not its dest."""

    def _get_default_metavar_for_optional(self, action: argparse.Action) -> str:
        return action.option_strings[0].lstrip("-").upper().replace("-", "_")
