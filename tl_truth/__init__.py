"""tl_truth: where a TransformerLens model "knows" its own answer is wrong (Orgad et al. 2024).

One import covers the whole job, in the order the package is laid out::

    import tl_truth as tt

    model = tt.load_model()                        # or your HookedTransformer / TransformerBridge
    ds = tt.load_questions("capitals", limit=32)   # data:         questions with a fixed split
    answers = tt.answer_questions(model, ds)       # answers:      greedy, graded, exact answer located
    store = tt.capture(model, answers.records, "runs/x/activations")  # probing: activations
    grid = tt.fit_probe_grid(store)                #               a probe per (hook, position)
    grid.plot()
    probe = grid.probe(*grid.best()[:2])
    with tt.steer(model, tt.from_probe(probe), alpha=4.0):             # intervention
        ...

`tt.run(model, dataset, out_dir)` is the main job (`tl-truth run`): answers, activations,
probe grid, baselines and controls, written as report.json / report.md / probe_grid.png.
The studies (`resample`, `select_answers`, `error_type_report`, `generalization_matrix`,
`patching_study`, `steering_sweep`, `probe_guided_choice`) return results with
`to_dataframe()`, `plot(ax=None)`, `save(dir)` and `load(dir)`. The settings of every job are the config dataclasses of
`tl_truth.config` (`RunOptions`, `ProbeConfig`, `SteeringConfig`, ...), the same ones the
`tl-truth` flags fill. `tt.testing.tiny_model("llama")` is a tiny random model (no download)
to try any of this on:

>>> import tl_truth as tt
>>> model = tt.testing.tiny_model("llama")
>>> tt.model_info(model).n_layers
2
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from tl_truth import testing  # `tt.testing.tiny_model`: a tiny random model, no download
from tl_truth.answers import (
    NAMED_POSITIONS,
    AnswerRun,
    GenerationConfig,
    PromptFormat,
    answer_questions,
    find_exact_answer,
    generate,
    grade,
    parse_format,
    resolve_positions,
)
from tl_truth.config import (
    CorrectConfig,
    GeneralizeConfig,
    PatchConfig,
    ProbeConfig,
    ResampleConfig,
    RunOptions,
    SelectConfig,
    SteeringConfig,
)
from tl_truth.data import QADataset, Question, load_questions, make_question
from tl_truth.intervention import (
    Direction,
    contrastive,
    from_probe,
    logit_metric,
    mass_mean,
    patch_metrics,
    probe_metric,
    random_like,
    steer,
    steering_hook,
)
from tl_truth.models import ModelInfo, hook_name, load_model, model_info
from tl_truth.probing import (
    ActivationStore,
    Probe,
    ProbeGrid,
    ProbeMismatchError,
    bootstrap_auc_ci,
    capture,
    evaluate_baselines,
    fit_probe_grid,
    logit_scores,
    roc_auc,
    score_records,
)
from tl_truth.studies import (
    CorrectionResult,
    ErrorTypeReport,
    GeneralizationResult,
    PatchStudy,
    ProbeReport,
    Resampling,
    SelectionResult,
    SteeringResult,
    error_type_report,
    generalization_matrix,
    patching_study,
    probe_guided_choice,
    resample,
    select_answers,
    steering_sweep,
)
from tl_truth.studies import run_all as run
from tl_truth.studies.patch_study import knows_more_pairs

try:
    __version__ = _version("tl_truth")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "NAMED_POSITIONS",
    "ActivationStore",
    "AnswerRun",
    "CorrectConfig",
    "CorrectionResult",
    "Direction",
    "ErrorTypeReport",
    "GeneralizationResult",
    "GeneralizeConfig",
    "GenerationConfig",
    "ModelInfo",
    "PatchConfig",
    "PatchStudy",
    "Probe",
    "ProbeConfig",
    "ProbeGrid",
    "ProbeMismatchError",
    "ProbeReport",
    "PromptFormat",
    "QADataset",
    "Question",
    "ResampleConfig",
    "Resampling",
    "RunOptions",
    "SelectConfig",
    "SelectionResult",
    "SteeringConfig",
    "SteeringResult",
    "__version__",
    "answer_questions",
    "bootstrap_auc_ci",
    "capture",
    "error_type_report",
    "evaluate_baselines",
    "find_exact_answer",
    "fit_probe_grid",
    "contrastive",
    "from_probe",
    "mass_mean",
    "generalization_matrix",
    "generate",
    "grade",
    "hook_name",
    "knows_more_pairs",
    "load_model",
    "load_questions",
    "logit_metric",
    "logit_scores",
    "make_question",
    "model_info",
    "parse_format",
    "patch_metrics",
    "patching_study",
    "probe_guided_choice",
    "probe_metric",
    "random_like",
    "resample",
    "resolve_positions",
    "roc_auc",
    "run",
    "score_records",
    "select_answers",
    "steer",
    "steering_hook",
    "steering_sweep",
    "testing",
]
