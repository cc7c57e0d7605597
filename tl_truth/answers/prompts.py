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
    kind: str  # "chat" | "plain"
    template: str = "{question}"  # for chat: the user message; for plain: the whole prompt
    system: str | None = None  # chat only; None keeps the template's default system prompt

    @property
    def template_has_special_tokens(self) -> bool:
        return self.kind == "chat"

    @property
    def stop_at_newline(self) -> bool:
        return self.kind == "plain"

    def render(self, tokenizer: Any, question: str) -> str:
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
QA = PromptFormat("plain", "Q: {question}\nA:")


def default_format(model: Any) -> PromptFormat:
    """Chat template for instruct models, Q/A for base models."""
    chat = getattr(model, "_tl_truth_chat", None)
    if chat is None:
        chat = bool(getattr(model.tokenizer, "chat_template", None))
    return CHAT if chat else QA


def parse_format(spec: str | None, model: Any) -> PromptFormat:
    """CLI form: None/'auto', 'chat', 'qa', or a template string containing {question}."""
    if spec in (None, "auto"):
        return default_format(model)
    if spec == "chat":
        return CHAT
    if spec == "qa":
        return QA
    if "{question}" in spec:
        return PromptFormat("plain", spec.replace("\\n", "\n"))
    raise ValueError(f"--prompt must be auto, chat, qa or a template with {{question}}: {spec!r}")
