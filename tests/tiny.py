"""Re-export of `tl_truth.testing` for the tests (kept so test imports stay short)."""

from tl_truth.testing import ARCHS, BACKENDS, tiny_hf, tiny_model, tiny_tokenizer

__all__ = ["ARCHS", "BACKENDS", "tiny_hf", "tiny_model", "tiny_tokenizer"]
