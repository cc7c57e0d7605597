"""Answers: generate (HF-exact greedy or sampled), grade, and locate the exact answer tokens.

The pipeline for one question is prompt -> generation -> grade -> exact answer -> token
positions; `answer_questions` runs all of it and returns an `AnswerRun` of `AnswerRecord`s.
"""

from tl_truth.answers.exact_answer import ExactAnswer, find_exact_answer
from tl_truth.answers.generation import Generation, GenerationConfig, generate, generate_ids
from tl_truth.answers.grading import Grade, grade, normalize
from tl_truth.answers.positions import NAMED_POSITIONS, resolve_position, resolve_positions
from tl_truth.answers.prompts import CHAT, QA, PromptFormat, default_format, parse_format
from tl_truth.answers.record import AnswerRecord
from tl_truth.answers.run import AnswerRun, answer_questions, summarize
from tl_truth.answers.token_acts import TokenRecorder

__all__ = [
    "CHAT",
    "NAMED_POSITIONS",
    "QA",
    "AnswerRecord",
    "AnswerRun",
    "ExactAnswer",
    "Generation",
    "GenerationConfig",
    "Grade",
    "PromptFormat",
    "TokenRecorder",
    "answer_questions",
    "default_format",
    "find_exact_answer",
    "generate",
    "generate_ids",
    "grade",
    "normalize",
    "parse_format",
    "resolve_position",
    "resolve_positions",
    "summarize",
]
