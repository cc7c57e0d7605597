"""The settings of every job, and their defaults: one source for the library and the CLI.

* `RunOptions`: the model, the questions, where to write and how to generate. Every job and
  every `tl-truth` subcommand takes them (`--model`, `--dataset`, `--limit`, `--out`, ...).
* `ProbeConfig`: the probe grid of the main job (`tl-truth run`), also used for the run that
  `steer`, `resample`, `select`, `generalize` and `patch` make when they are given none.
* `SteeringConfig`, `ResampleConfig`, `SelectConfig`, `GeneralizeConfig`, `PatchConfig`,
  `CorrectConfig`: one per study.

Generation itself is `tl_truth.answers.generation.GenerationConfig` (its defaults are the
defaults here); `RunOptions.generation()` builds one. A subcommand's defaults are these
dataclasses' defaults except where `defaults(command)` says otherwise: the studies generate
short answers (`STUDY_MAX_NEW_TOKENS`), `generalize` takes every built-in task, and the run a
study makes for itself skips the p(True) baseline. The job functions of
`tl_truth.studies.jobs` use `defaults(command)` for any config they are not given, so
`steer_job()` and `tl-truth steer` do the same thing; `RunOptions.for_command("steer",
dataset="elements")` is a subcommand's options with some changed.

List-valued fields also accept the CLI's comma-separated strings (`alphas="2,4,8"`) and are
stored as tuples; layer fields keep a spec (`"all"`, `"every:K"`, `"0,5,10"`) or a tuple of
layers, resolved against the model by `parse_layers`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

from tl_truth.answers.exact_answer import LOCATE_POLICIES
from tl_truth.answers.generation import GenerationConfig
from tl_truth.answers.positions import EXACT_POSITIONS, NAMED_POSITIONS
from tl_truth.data.tasks import BUILTIN_TASKS
from tl_truth.intervention.steering import SCOPES
from tl_truth.models import DEFAULT_MODEL, HOOK_KINDS, hook_name

BACKENDS = ("bridge", "hooked")
UNITS = ("sd", "abs")
SPLITS = ("test", "train", "all")
CAPTURE_PATHS = ("fused", "two_pass")
LayerSpec = str | tuple[int, ...]

# The studies compare many answers to the same question: short answers keep them affordable.
STUDY_MAX_NEW_TOKENS = 24
# `generalize` compares tasks: every built-in one, 200 questions each by default.
ALL_TASKS = ",".join(BUILTIN_TASKS)
GENERALIZE_LIMIT = 200


def parse_layers(spec: LayerSpec | Sequence[int], n_layers: int) -> list[int]:
    """The layers a layer spec names, checked against the model's depth.

    Args:
        spec: `"all"`, `"every:K"` (0, K, 2K, ... and the last layer), `"0,5,10"` or a
            sequence of layer indices.
        n_layers: the model's number of layers.

    Returns:
        The layer indices (ValueError if one is out of range or there are none).

    >>> parse_layers("every:2", 5), parse_layers("0,3", 4), parse_layers([1], 2)
    ([0, 2, 4], [0, 3], [1])
    """
    if isinstance(spec, str) and spec == "all":
        return list(range(n_layers))
    if isinstance(spec, str) and spec.startswith("every:"):
        step = int(spec.split(":", 1)[1])
        return sorted(set(range(0, n_layers, step)) | {n_layers - 1})
    if isinstance(spec, str):
        layers = [int(x) for x in spec.split(",") if x.strip()]
    else:
        layers = [int(x) for x in spec]
    bad = [x for x in layers if not 0 <= x < n_layers]
    if bad or not layers:
        raise ValueError(f"--layers {spec!r}: layers must be in 0..{n_layers - 1}")
    return layers


def _strings(value: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(x.strip() for x in value.split(",") if x.strip())
    return tuple(value)


def _layer_spec(value: LayerSpec | Sequence[int] | None) -> LayerSpec | None:
    return value if value is None or isinstance(value, str) else tuple(int(x) for x in value)


def _set(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)  # normalising a frozen dataclass in __post_init__


@dataclass(frozen=True)
class RunOptions:
    """What every job needs: which model on which questions, where to write, how to generate.

    Attributes:
        model: a built-in model name, an HF directory, a .gguf file or a hub id.
        backend: "bridge" (TransformerBridge) or "hooked" (HookedTransformer).
        compat: TransformerBridge compatibility mode (HookedTransformer-style weights).
        dataset: built-in task(s), `format:path` or a CSV/JSONL file, comma-separated (None
            only for `select`, which then reads the samples already in `out`).
        limit: questions per dataset part (for `steer`: held-out test questions); None: all.
        out: the output directory.
        prompt: `auto`, `chat`, `qa` or a template with `{question}`.
        max_new_tokens: answer length limit in tokens.
        batch_size: prompts per generation batch.
        model_extract: fall back to asking the model for the exact answer when string
            matching finds none.
        device: torch device (None: automatic).
        dtype: model dtype, "float32", "bfloat16" or "float16" (probes always fit in float32).
        device_map: bridge only: Hugging Face device map for a model bigger than one device:
            "auto", "balanced", "sequential", a JSON object or a JSON file ({module: device}).
        max_memory: with `device_map`: memory per device, e.g. "0=70GiB,1=70GiB,cpu=200GiB".
        n_devices: hooked backend only: split the blocks across this many CUDA devices.
        threads: torch CPU threads (set before loading); None: torch's default.
        quiet: no progress bars.

    >>> opts = RunOptions(dataset="elements", limit=8, out="runs/elements")
    >>> opts.generation().max_new_tokens, opts.progress
    (48, True)
    """

    model: str = DEFAULT_MODEL
    backend: Literal["bridge", "hooked"] = "bridge"
    compat: bool = False  # TransformerBridge compatibility mode (HookedTransformer-style weights)
    dataset: str | None = "capitals"
    limit: int | None = None
    out: str = "runs/latest"
    prompt: str = "auto"
    max_new_tokens: int = GenerationConfig.max_new_tokens
    batch_size: int = GenerationConfig.batch_size
    model_extract: bool = True
    device: str | None = None
    dtype: str = "float32"
    device_map: str | None = None
    max_memory: str | None = None
    n_devices: int = 1
    threads: int | None = None
    quiet: bool = False  # no progress bars

    def __post_init__(self) -> None:
        _set(self, "out", str(self.out))
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")

    @property
    def progress(self) -> bool:
        """Whether to show progress bars (`not quiet`).

        >>> RunOptions(quiet=True).progress
        False
        """
        return not self.quiet

    def generation(self, **changes: Any) -> GenerationConfig:
        """The `GenerationConfig` of these options (greedy unless `changes` say otherwise).

        Args:
            **changes: `GenerationConfig` fields to set (e.g. `temperature=1.0`).

        Returns:
            A `GenerationConfig` with `max_new_tokens` and `batch_size` from these options.

        >>> RunOptions(max_new_tokens=12).generation(temperature=1.0).temperature
        1.0
        """
        return GenerationConfig(
            **{"max_new_tokens": self.max_new_tokens, "batch_size": self.batch_size, **changes}
        )

    @classmethod
    def for_command(cls, command: str, **changes: Any) -> RunOptions:
        """The options `tl-truth <command>` defaults to, with `changes`.

        Args:
            command: a subcommand (`COMMANDS`: "generate", "run", "steer", ...).
            **changes: fields to set.

        Returns:
            The subcommand's default `RunOptions` with `changes` applied.

        >>> opts = RunOptions.for_command("steer", dataset="elements")
        >>> opts.dataset, opts.max_new_tokens
        ('elements', 24)
        """
        return replace(defaults(command)["options"], **changes)


@dataclass(frozen=True)
class ProbeConfig:
    """The probe grid of the main job: which activations to capture and how to score probes.

    Attributes:
        hooks: hook kinds (`resid_pre`, `resid_mid`, `resid_post`, `attn_out`, `mlp_out`),
            each captured at every layer of `layers` (a comma-separated string is accepted).
        layers: a layer spec (`parse_layers`) or a tuple of layers.
        positions: named positions to capture (None: all of `NAMED_POSITIONS`).
        n_boot: bootstrap replicates for every 95% CI a job reports (probe grid, baselines,
            error types, selection, generalisation).
        p_true: also score the p(True) baseline (one extra forward per test answer).
        locate: how the exact answer is found, "blind" (never reads the gold or the grade)
            or "paper" (Orgad et al.: the gold alias of a correct answer first).
        n_perm: train-label permutations for the selected exact-answer cell's null
            distribution, the cell re-selected each time (0: none).
        capture: "fused" reads activations inside generation (the decode loop's hooks, no
            second forward pass; answers it did not record get the two-pass capture);
            "two_pass" runs every answer through the model again after generation.

    >>> ProbeConfig(hooks="resid_post,attn_out", layers="every:2").hooks
    ('resid_post', 'attn_out')
    """

    hooks: tuple[str, ...] = ("resid_post",)
    layers: LayerSpec = "all"
    positions: tuple[str, ...] | None = None
    n_boot: int = 1000
    p_true: bool = True
    locate: str = "blind"
    n_perm: int = 100
    capture: str = "fused"

    def __post_init__(self) -> None:
        _set(self, "hooks", _strings(self.hooks))
        if self.capture not in CAPTURE_PATHS:
            raise ValueError(f"capture must be one of {CAPTURE_PATHS}, got {self.capture!r}")
        _set(self, "layers", _layer_spec(self.layers))
        if self.positions is not None:
            _set(self, "positions", _strings(self.positions) or None)
        if self.locate not in LOCATE_POLICIES:
            raise ValueError(f"locate must be one of {LOCATE_POLICIES}, got {self.locate!r}")
        bad = [k for k in self.hooks if k not in HOOK_KINDS]
        if bad or not self.hooks:
            raise ValueError(f"hook kinds must be among {HOOK_KINDS}, got {self.hooks}")

    def hook_names(self, n_layers: int) -> list[str]:
        """Every hook to capture: each kind at each layer (kind-major, as `tl-truth run`).

        Args:
            n_layers: the model's number of layers (to resolve `layers`).

        Returns:
            The hook names.

        >>> ProbeConfig(hooks="resid_post,attn_out", layers="every:2").hook_names(3)
        ['blocks.0.hook_resid_post', 'blocks.2.hook_resid_post', 'blocks.0.hook_attn_out', 'blocks.2.hook_attn_out']
        """
        layers = parse_layers(self.layers, n_layers)
        return [hook_name(kind, layer) for kind in self.hooks for layer in layers]

    def position_names(self) -> tuple[str, ...]:
        """The named positions to capture.

        Returns:
            `positions`, or every one of `NAMED_POSITIONS` when it is None.

        >>> ProbeConfig(positions="exact_first,exact_last").position_names()
        ('exact_first', 'exact_last')
        """
        return NAMED_POSITIONS if self.positions is None else self.positions


DIRECTION_FAMILIES = ("probe", "mass_mean")
# The families `steer --directions` compares on held-out data (`tl_truth.studies.steering_protocol`).
STEERING_FAMILIES = ("probe", "mass_mean", "contrastive", "heads")
# The single-family sweep's alphas when none are given.
SWEEP_ALPHAS = (2.0, 4.0, 8.0)


def _family_alphas(value: Any) -> tuple[tuple[str, tuple[float, ...]], ...] | None:
    """ "probe=4,16;heads=5,10" (or a dict) -> (("probe", (4.0, 16.0)), ("heads", (5.0, 10.0)))."""
    if value is None:
        return None
    if isinstance(value, str):
        items = []
        for part in value.split(";"):
            if not part.strip():
                continue
            name, sep, grid = part.partition("=")
            if not sep:
                raise ValueError(
                    f"family alphas must look like 'probe=4,16;heads=5,10', got {value!r}"
                )
            items.append((name.strip(), grid))
    else:
        items = list(value.items()) if isinstance(value, dict) else list(value)
    out = []
    for name, grid in items:
        if name not in STEERING_FAMILIES:
            raise ValueError(
                f"unknown family {name!r} in family alphas; choose from {STEERING_FAMILIES}"
            )
        grid = grid.split(",") if isinstance(grid, str) else grid
        out.append((name, tuple(float(a) for a in grid)))
    return tuple(out)


@dataclass(frozen=True)
class SteeringConfig:
    """Steering: a sweep of one direction family, or several families compared on held-out data.

    Without `directions`: the single-family sweep (`steering_sweep`: every layer x alpha on
    the test questions, against random directions). With `directions`: the held-out protocol
    (`tl_truth.studies.steering_protocol`): each family's layer, alpha, scope (and k for heads)
    are chosen on `n_validation` questions carved from train, then evaluated once on test.

    Attributes:
        layers: where to steer with a probe refitted on a run's train split (None: the run's
            best layer; with a saved probe, its own layer). The probe sits at `hook_kind` of
            each layer and at the run's best position. The heads family ranks the heads of
            these layers (None: of every layer).
        alphas: strengths (a comma-separated string is accepted), in standard deviations of
            the activations' projection (`units="sd"`) or absolute (`"abs"`). None: 2, 4, 8
            for the sweep; each family's default grid for `directions`
            (`tl_truth.studies.steering_protocol`), given alphas replace it for every family.
        units: "sd" or "abs".
        scope: which tokens are pushed (`all`, `prompt`, `last_prompt`, `generated`).
        n_random: norm-matched random directions per setting (per chosen setting with
            `directions`).
        direction: the family of the single-family sweep, at each refitted probe's cell:
            "probe" (the logistic probe's weight vector) or "mass_mean" (mean of right minus
            mean of wrong answers, ITI's direction). A saved probe (`--probe`) only gives "probe".
        hook_kind: the hook kind of the refitted probes (and of the run `steer` makes).
        train_limit: questions per dataset part for the run `steer` makes when it is given no
            probe and no run (None: all of them; the sweep itself answers `RunOptions.limit`
            held-out test questions).
        directions: families for the held-out protocol (`STEERING_FAMILIES`, a comma-separated
            string is accepted); None: the single-family sweep of `direction`.
        family_alphas: per-family alpha grids, "probe=4,16;heads=5,10" (override `alphas`).
        scopes: scopes the protocol chooses among (None: `scope` only).
        head_ks: numbers of heads the heads family chooses among.
        n_validation: questions carved from the run's train questions to choose settings on
            (they are left out of every direction's fit).
        seed: seeds the validation split, the random directions and the bootstrap.

    >>> SteeringConfig(alphas="2,4", layers=[3]).alphas
    (2.0, 4.0)
    >>> cfg = SteeringConfig(directions="probe,heads", family_alphas="heads=5,10")
    >>> cfg.directions, cfg.family_alphas
    (('probe', 'heads'), (('heads', (5.0, 10.0)),))
    """

    layers: LayerSpec | None = None
    alphas: tuple[float, ...] | None = None
    units: Literal["sd", "abs"] = "sd"
    scope: Literal["all", "prompt", "last_prompt", "generated"] = "all"
    n_random: int = 5
    direction: Literal["probe", "mass_mean"] = "probe"
    hook_kind: str = "resid_post"
    train_limit: int | None = None
    directions: tuple[str, ...] | None = None
    family_alphas: tuple[tuple[str, tuple[float, ...]], ...] | None = None
    scopes: tuple[str, ...] | None = None
    head_ks: tuple[int, ...] = (4, 16)
    n_validation: int = 40
    seed: int = 0

    def __post_init__(self) -> None:
        _set(self, "layers", _layer_spec(self.layers))
        if self.alphas is not None:
            alphas = self.alphas.split(",") if isinstance(self.alphas, str) else self.alphas
            _set(self, "alphas", tuple(float(a) for a in alphas))
        if self.units not in UNITS:
            raise ValueError(f"units must be one of {UNITS}, got {self.units!r}")
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {self.scope!r}")
        if self.hook_kind not in HOOK_KINDS:
            raise ValueError(f"hook_kind must be one of {HOOK_KINDS}, got {self.hook_kind!r}")
        if self.direction not in DIRECTION_FAMILIES:
            raise ValueError(
                f"direction must be one of {DIRECTION_FAMILIES}, got {self.direction!r}"
            )
        if self.directions is not None:
            _set(self, "directions", _strings(self.directions))
            bad = [f for f in self.directions if f not in STEERING_FAMILIES]
            if bad or not self.directions:
                raise ValueError(f"directions must be among {STEERING_FAMILIES}, got {bad or '()'}")
        _set(self, "family_alphas", _family_alphas(self.family_alphas))
        if self.scopes is not None:
            _set(self, "scopes", _strings(self.scopes))
            bad = [s for s in self.scopes if s not in SCOPES]
            if bad or not self.scopes:
                raise ValueError(f"scopes must be among {SCOPES}, got {bad or '()'}")
        ks = self.head_ks.split(",") if isinstance(self.head_ks, str) else self.head_ks
        _set(self, "head_ks", tuple(int(k) for k in ks))
        if not self.head_ks or min(self.head_ks) < 1:
            raise ValueError(f"head_ks must be positive, got {self.head_ks}")
        if self.n_validation < 1:
            raise ValueError(f"n_validation must be >= 1, got {self.n_validation}")


@dataclass(frozen=True)
class ResampleConfig:
    """K sampled answers per question at `temperature` (the paper: K = 30), seeded.

    Attributes:
        k: samples per question.
        temperature: sampling temperature (> 0).
        seed: the sampling seed.

    >>> ResampleConfig(k=30).k
    30
    """

    k: int = 10
    temperature: float = 1.0
    seed: int = GenerationConfig.seed


@dataclass(frozen=True)
class SelectConfig:
    """Answer selection's settings.

    Attributes:
        split: the questions evaluated, "test", "train" or "all" (the probe was trained on
            "train").

    >>> SelectConfig().split
    'test'
    """

    split: Literal["test", "train", "all"] = "test"


@dataclass(frozen=True)
class GeneralizeConfig:
    """Cross-task generalisation's settings.

    Attributes:
        positions: the candidates for each task's best cell (None or "all": every captured
            position; default: the exact-answer positions).

    >>> GeneralizeConfig(positions="all").positions is None
    True
    """

    positions: tuple[str, ...] | None = EXACT_POSITIONS

    def __post_init__(self) -> None:
        if isinstance(self.positions, str) and self.positions == "all":
            _set(self, "positions", None)
        elif self.positions is not None:
            _set(self, "positions", _strings(self.positions))


@dataclass(frozen=True)
class PatchConfig:
    """Activation patching of right samples into wrong greedy answers.

    Attributes:
        layers: layers to patch (a spec, `parse_layers`, or a tuple).
        hook_kind: where (`resid_pre` patches a layer's input).
        split: questions to take ("test", "train" or "all").
        max_questions: at most this many pairs (None: all).

    >>> PatchConfig(layers=[0, 1]).layers
    (0, 1)
    """

    layers: LayerSpec = "all"
    hook_kind: str = "resid_pre"
    split: Literal["test", "train", "all"] = "test"
    max_questions: int | None = None

    def __post_init__(self) -> None:
        _set(self, "layers", _layer_spec(self.layers))
        if self.hook_kind not in HOOK_KINDS:
            raise ValueError(f"hook_kind must be one of {HOOK_KINDS}, got {self.hook_kind!r}")


SLOTS = ("exact", "start")


@dataclass(frozen=True)
class CorrectConfig:
    """Probe-guided answer choice (`tl-truth correct`): candidates, forced and probe-scored.

    Attributes:
        k: candidates per question (the most likely vocabulary entries of a closed-vocabulary
            task; the most likely first tokens, greedily completed, of a free-form one).
        slot: where candidates branch off the greedy answer: "exact" (at its exact answer,
            keeping the text before it; at the start when none was located) or "start".
        split: the run's questions corrected ("test": the probe never trained on them).
        position: the probe's position (None: the run's selected cell's if it reads the
            candidate's own tokens, else "exact_last": before the answer every candidate would
            tie); the probe is refitted on the run's train split at the selected cell's layer
            and hook kind.
        n_boot: bootstrap replicates for the CIs.
        seed: the bootstrap seed.

    >>> CorrectConfig(k=3).k, CorrectConfig().slot
    (3, 'exact')
    """

    k: int = 5
    slot: Literal["exact", "start"] = "exact"
    split: Literal["test", "train", "all"] = "test"
    position: str | None = None
    n_boot: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")
        if self.slot not in SLOTS:
            raise ValueError(f"slot must be one of {SLOTS}, got {self.slot!r}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.position is not None and self.position not in NAMED_POSITIONS:
            raise ValueError(f"position must be one of {NAMED_POSITIONS}, got {self.position!r}")


_STUDY_OPTIONS = RunOptions(max_new_tokens=STUDY_MAX_NEW_TOKENS)
# The run a study makes for itself is there for its probe: no p(True) baseline by default.
_STUDY_PROBING = ProbeConfig(p_true=False)

_DEFAULTS: dict[str, dict[str, Any]] = {
    "generate": {"options": RunOptions()},
    "run": {"options": RunOptions(), "probing": ProbeConfig()},
    "steer": {
        "options": _STUDY_OPTIONS,
        "steering": SteeringConfig(),
        "resampling": ResampleConfig(),
        "probing": _STUDY_PROBING,
    },
    "resample": {
        "options": _STUDY_OPTIONS,
        "resampling": ResampleConfig(),
        "probing": _STUDY_PROBING,
    },
    "select": {
        "options": replace(_STUDY_OPTIONS, dataset=None),
        "selection": SelectConfig(),
        "resampling": ResampleConfig(),
        "probing": _STUDY_PROBING,
    },
    "generalize": {
        "options": RunOptions(
            dataset=ALL_TASKS, limit=GENERALIZE_LIMIT, max_new_tokens=STUDY_MAX_NEW_TOKENS
        ),
        "generalization": GeneralizeConfig(),
        "probing": ProbeConfig(layers="every:2", p_true=False),
    },
    "patch": {
        "options": RunOptions(),
        "patching": PatchConfig(),
        "resampling": ResampleConfig(),
        "probing": _STUDY_PROBING,
    },
    # the questions, prompts and answer length are the run's (`--from-run`)
    "correct": {"options": replace(_STUDY_OPTIONS, dataset=None), "correction": CorrectConfig()},
}
COMMANDS = tuple(_DEFAULTS)


def defaults(command: str) -> dict[str, Any]:
    """The configs `tl-truth <command>` starts from, by job argument name.

    Args:
        command: a subcommand (`COMMANDS`).

    Returns:
        A new dict: job argument name (`options`, `probing`, `steering`, ...) -> config.

    >>> sorted(defaults("steer")), defaults("generalize")["options"].limit
    (['options', 'probing', 'resampling', 'steering'], 200)
    """
    if command not in _DEFAULTS:
        raise ValueError(f"unknown command {command!r}; choose from {COMMANDS}")
    return dict(_DEFAULTS[command])


def field_names(config_type: type) -> list[str]:
    """The field names of a config dataclass.

    Args:
        config_type: a dataclass (e.g. `ResampleConfig`).

    Returns:
        Its field names, in order.

    >>> field_names(ResampleConfig)
    ['k', 'temperature', 'seed']
    """
    return [f.name for f in fields(config_type)]
