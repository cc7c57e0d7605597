"""Studies: the main job and the paper's "knows more than it shows" experiments.

Each study returns a result dataclass with `to_dict`, `to_dataframe`, `to_markdown`,
`plot(ax=None)`, `save(dir)` and `load(dir)`.
"""

from tl_truth.studies.correction import probe_guided_choice
from tl_truth.studies.correction_result import CorrectionResult
from tl_truth.studies.error_types import ErrorTypeReport, error_type_report
from tl_truth.studies.generalization import GeneralizationResult, generalization_matrix
from tl_truth.studies.main_job import ProbeReport, probe_report, run_all
from tl_truth.studies.patch_study import PatchStudy, load_study, patching_study
from tl_truth.studies.resampling import Resampling, SampleSet, resample
from tl_truth.studies.selection import SelectionResult, select_answers
from tl_truth.studies.steering_eval import SteeringResult, steering_sweep
from tl_truth.studies.steering_protocol import Candidate, select_and_test
from tl_truth.studies.steering_protocol_result import FamilySteeringResult

__all__ = [
    "Candidate",
    "CorrectionResult",
    "ErrorTypeReport",
    "FamilySteeringResult",
    "GeneralizationResult",
    "PatchStudy",
    "ProbeReport",
    "Resampling",
    "SampleSet",
    "SelectionResult",
    "SteeringResult",
    "error_type_report",
    "generalization_matrix",
    "load_study",
    "patching_study",
    "probe_guided_choice",
    "probe_report",
    "resample",
    "run_all",
    "select_and_test",
    "select_answers",
    "steering_sweep",
]
