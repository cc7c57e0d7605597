"""Prompts: how a question becomes the exact text fed to the model.

Instruct models get their chat template (the text then already holds its special tokens, so it
is tokenised without adding more); base models get "Q: ... A:" and stop at the first newline.
Both are overridable with any `str.format` template holding `{question}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PromptFormat:
    r"""How a question becomes the prompt text: a chat template or a plain template.

    Args:
        kind: "chat" (the tokenizer's chat template, the question as the user message) or
            "plain" (the template is the whole prompt; generation stops at a newline).
        template: a `str.format` template holding ``{question}``.
        system: chat only: a system prompt; None keeps the chat template's default.

    >>> fmt = PromptFormat("plain", "Question: {question}\nAnswer:")
    >>> fmt.render(None, "What is 2 + 2?")
    'Question: What is 2 + 2?\nAnswer:'
    >>> fmt.stop_at_newline, CHAT.template_has_special_tokens
    (True, True)
    """

    kind: str  # "chat" | "plain"
    template: str = "{question}"  # for chat: the user message; for plain: the whole prompt
    system: str | None = None  # chat only; None keeps the template's default system prompt

    @property
    def template_has_special_tokens(self) -> bool:
        """Chat text already holds its special tokens: tokenise it without adding more."""
        return self.kind == "chat"

    @property
    def stop_at_newline(self) -> bool:
        """Plain (base-model) prompts end the answer at the first newline."""
        return self.kind == "plain"

    def render(self, tokenizer: Any, question: str) -> str:
        r"""The exact prompt text for `question`.

        Args:
            tokenizer: the model's tokenizer (read only for "chat": its chat template).
            question: the question text.

        Returns:
            The prompt string; for "chat", with the generation prompt added.

        Raises:
            ValueError: the template lacks ``{question}``, or "chat" without a chat template.

        >>> QA.render(None, "What is the capital of France?")
        'Q: What is the capital of France?\nA:'
        """
        if "{question}" not in self.template:
            raise ValueError(f"prompt template must contain '{{question}}': {self.template!r}")
        text = self.template.format(question=question)
        if self.kind == "plain":
            return text
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("chat prompt format needs a tokenizer with a chat template")
        messages = [{"role": "user", "content": text}]
        if self.system is not None:
            messages.insert(0, {"role": "system", "content": self.system})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


CHAT = PromptFormat("chat")
"""The tokenizer's chat template, the question as the only user message (instruct models)."""
QA = PromptFormat("plain", "Q: {question}\nA:")
r"""``Q: <question>\nA:``, answer up to the first newline (base models)."""


def default_format(model: Any) -> PromptFormat:
    """Chat template for instruct models, Q/A for base models.

    Args:
        model: a model from `tl_truth.load_model` (or `tl_truth.testing.tiny_model`).

    Returns:
        `CHAT` when the model is marked as chat or its tokenizer has a chat template, else `QA`.

    >>> from tl_truth.testing import tiny_model
    >>> default_format(tiny_model("llama")) is QA  # a base model: no chat template
    True
    """
    chat = getattr(model, "_tl_truth_chat", None)
    if chat is None:
        chat = bool(getattr(model.tokenizer, "chat_template", None))
    return CHAT if chat else QA


def parse_format(spec: str | None, model: Any) -> PromptFormat:
    r"""A prompt format from its CLI form (`--prompt`).

    Args:
        spec: None or "auto" (`default_format(model)`), "chat", "qa", or a plain template
            holding ``{question}`` (a literal ``\n`` in it becomes a newline).
        model: the model, read only for "auto".

    Returns:
        The `PromptFormat`.

    Raises:
        ValueError: any other `spec`.

    >>> from tl_truth.testing import tiny_model
    >>> model = tiny_model("llama")
    >>> parse_format("qa", model) is QA, parse_format("chat", model) is CHAT
    (True, True)
    >>> parse_format("Question: {question}\\nAnswer:", model).template
    'Question: {question}\nAnswer:'
    """
    if spec in (None, "auto"):
        return default_format(model)
    if spec == "chat":
        return CHAT
    if spec == "qa":
        return QA
    if "{question}" in spec:
        return PromptFormat("plain", spec.replace("\\n", "\n"))
    raise ValueError(f"--prompt must be auto, chat, qa or a template with {{question}}: {spec!r}")
