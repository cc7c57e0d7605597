"""The public surface, pinned: `import tl_truth as tt` covers the whole job.

A name leaving `__all__` (or a new one arriving) must be a decision, so this list changes in the
same commit as the API.
"""

from __future__ import annotations

import re

import tl_truth as tt

PUBLIC = {
    # models
    "load_model", "model_info", "ModelInfo", "hook_name",
    # data
    "load_questions", "make_question", "Question", "QADataset",
    # answers
    "answer_questions", "AnswerRun", "GenerationConfig", "PromptFormat", "parse_format",
    "generate", "grade", "find_exact_answer", "resolve_positions", "NAMED_POSITIONS",
    # probing
    "capture", "ActivationStore", "fit_probe_grid", "ProbeGrid", "Probe", "ProbeMismatchError",
    "evaluate_baselines", "score_records", "roc_auc", "bootstrap_auc_ci", "logit_scores",
    # intervention
    "Direction", "from_probe", "mass_mean", "contrastive", "random_like", "steer", "steering_hook", "probe_metric",
    "logit_metric", "patch_metrics",
    # studies
    "run", "ProbeReport", "resample", "Resampling", "select_answers", "SelectionResult",
    "error_type_report", "ErrorTypeReport", "generalization_matrix", "GeneralizationResult",
    "patching_study", "PatchStudy", "steering_sweep", "SteeringResult", "knows_more_pairs",
    "probe_guided_choice", "CorrectionResult",
    # config: the settings of every job (the `tl-truth` flags fill the same dataclasses)
    "RunOptions", "ProbeConfig", "SteeringConfig", "ResampleConfig", "SelectConfig",
    "GeneralizeConfig", "PatchConfig", "CorrectConfig",
    # tiny random models for trying the library (and for doctests)
    "testing",
    "__version__",
}  # fmt: skip


def test_all_is_pinned():
    missing = PUBLIC - set(tt.__all__)
    extra = set(tt.__all__) - PUBLIC
    assert not missing and not extra, f"missing {sorted(missing)}, unpinned {sorted(extra)}"


def test_every_public_name_resolves():
    for name in tt.__all__:
        assert getattr(tt, name) is not None, name


def test_version_is_a_version():
    assert re.match(r"^\d+\.\d+", tt.__version__), tt.__version__


def test_subpackages_follow_the_pipeline():
    # data -> answers -> probing -> intervention -> studies: each exports its own __all__
    import tl_truth.answers
    import tl_truth.data
    import tl_truth.intervention
    import tl_truth.probing
    import tl_truth.studies

    for pkg in (
        tl_truth.data,
        tl_truth.answers,
        tl_truth.probing,
        tl_truth.intervention,
        tl_truth.studies,
    ):
        assert pkg.__all__, pkg.__name__
        for name in pkg.__all__:
            assert hasattr(pkg, name), f"{pkg.__name__}.{name}"


def test_new_surface_is_the_same_objects():
    import tl_truth.config
    import tl_truth.probing
    import tl_truth.studies.patch_study
    import tl_truth.testing

    assert tt.logit_scores is tl_truth.probing.logit_scores
    assert tt.knows_more_pairs is tl_truth.studies.patch_study.knows_more_pairs
    assert tt.testing is tl_truth.testing and callable(tt.testing.tiny_model)
    for name in ("RunOptions", "ProbeConfig", "SteeringConfig", "ResampleConfig"):
        assert getattr(tt, name) is getattr(tl_truth.config, name)
    for name in ("SelectConfig", "GeneralizeConfig", "PatchConfig"):
        assert getattr(tt, name) is getattr(tl_truth.config, name)
