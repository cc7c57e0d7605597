"""Generations: batched greedy decoding and sampling on either backend, hooks live.

Why our own loop rather than `model.generate()`: the bridge's cached generate is wrong under
transformers >= 5.24 (see `compat.py`), HookedTransformer's is ~3x slower, and neither returns
the per-token log-probabilities and exact token ids we need. The loop left-pads a batch, runs the
prompt once, then feeds one token per step through the model's own KV cache with an explicit
attention mask, so TransformerLens hooks fire on every step (steering relies on it).

While a batch decodes, `decode_state()` tells a hook where it is: how many (padded) positions are
already cached and each row's left padding, so a hook can work in absolute token positions that
mean the same with and without the cache.
"""

from __future__ import annotations

import contextvars
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from tl_truth.answers.prompts import PromptFormat, default_format
from tl_truth.models import backend_of, model_device


@dataclass
class Generation:
    """One answer, with the exact token ids the model saw and produced.

    The full sequence fed to the model is `prompt_token_ids + answer_token_ids` (unpadded).
    The stop token (EOS, or a newline token for base models) is not part of the answer: it was
    produced but never fed back; it is kept in `stop_token_id`.
    """

    prompt: str
    prompt_token_ids: list[int]
    answer_token_ids: list[int]
    text: str
    token_logprobs: list[float]
    stop_reason: str  # "eos" | "newline" | "max_tokens"
    stop_token_id: int | None = None
    sample_index: int = 0  # 0 for greedy; 0..K-1 for samples

    @property
    def full_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.answer_token_ids

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DecodeState:
    """Where the current forward pass sits in the batch being decoded (for hooks)."""

    offset: int  # padded positions already in the KV cache before this forward pass
    pad_lengths: Int[Tensor, " batch"]  # left padding per row
    prompt_lengths: Int[Tensor, " batch"]  # unpadded prompt length per row
    step: int  # 0 = the prompt pass, k = k-th generated token being fed

    def absolute_positions(self, seq_len: int) -> Int[Tensor, "batch seq"]:
        """Unpadded positions of this pass's tokens; negative for padding."""
        pos = torch.arange(self.offset, self.offset + seq_len, device=self.pad_lengths.device)
        return pos[None, :] - self.pad_lengths[:, None]


_STATE: contextvars.ContextVar[DecodeState | None] = contextvars.ContextVar(
    "tl_truth_decode_state", default=None
)


def decode_state() -> DecodeState | None:
    """The decoding state of the forward pass running now, or None outside `generate`."""
    return _STATE.get()


# ---------------------------------------------------------------------------------------------
# One forward step per backend, both through the model's own cache


class _BridgeStepper:
    """TransformerBridge: pass HF's cache object back through `forward` with the full mask."""

    def __init__(self, model: Any):
        self.model, self.cache, self.mask = model, None, None

    def __call__(self, tokens: Tensor, mask: Tensor) -> Float[Tensor, "batch seq vocab"]:
        self.mask = mask if self.mask is None else torch.cat([self.mask, mask], dim=1)
        logits, self.cache = self.model(
            tokens,
            attention_mask=self.mask,
            past_key_values=self.cache,
            use_cache=True,
            return_type="logits_and_cache",
        )
        return logits

    def expand(self, index: Int[Tensor, " rows"]) -> None:
        """Repeat cached rows (`index` into the current rows), e.g. one prefill per prompt."""
        self.cache.reorder_cache(index.to(self.mask.device))  # index_select on every layer
        self.mask = self.mask[index]


class _HookedStepper:
    """HookedTransformer: its own KV cache, which appends each step's mask itself."""

    def __init__(self, model: Any, batch: int):
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        self.model = model
        self.cache = TransformerLensKeyValueCache.init_cache(model.cfg, model_device(model), batch)

    def __call__(self, tokens: Tensor, mask: Tensor) -> Float[Tensor, "batch seq vocab"]:
        return self.model(tokens, attention_mask=mask, past_kv_cache=self.cache)

    def expand(self, index: Int[Tensor, " rows"]) -> None:
        for entry in self.cache.entries:
            entry.past_keys = entry.past_keys[index.to(entry.past_keys.device)]
            entry.past_values = entry.past_values[index.to(entry.past_values.device)]
        mask = self.cache.previous_attention_mask
        self.cache.previous_attention_mask = mask[index.to(mask.device)]


class _NoCacheStepper:
    """Reference path: re-run the whole sequence every step (slow; for tests and debugging)."""

    def __init__(self, model: Any):
        self.model, self.tokens, self.mask = model, None, None

    def __call__(self, tokens: Tensor, mask: Tensor) -> Float[Tensor, "batch seq vocab"]:
        self.tokens = tokens if self.tokens is None else torch.cat([self.tokens, tokens], 1)
        self.mask = mask if self.mask is None else torch.cat([self.mask, mask], 1)
        return self.model(self.tokens, attention_mask=self.mask)[:, -tokens.shape[1] :]


def _stepper(model: Any, batch: int, use_cache: bool):
    if not use_cache:
        return _NoCacheStepper(model)
    return _BridgeStepper(model) if backend_of(model) == "bridge" else _HookedStepper(model, batch)


# ---------------------------------------------------------------------------------------------
# Decoding


@dataclass
class GenerationConfig:
    max_new_tokens: int = 48
    temperature: float = 0.0  # 0 = greedy
    num_samples: int = 1  # K samples per prompt (temperature > 0)
    batch_size: int = 32
    stop_at_newline: bool | None = None  # None: yes for base-model formats, no for chat
    seed: int = 0
    use_cache: bool = True
    extra_stop_ids: tuple[int, ...] = field(default_factory=tuple)
    share_prompt_pass: bool = True  # K samples of a prompt: one prompt pass, cache repeated


# Settings that change speed but not the answers: answers made with other values are reusable.
SPEED_ONLY_SETTINGS = ("share_prompt_pass",)


def same_generation_settings(saved: dict | None, config: GenerationConfig) -> bool:
    """Whether answers recorded with `saved` (a saved `vars(config)`) are what `config` makes."""

    def answers_depend_on(d: dict) -> dict:
        return {k: v for k, v in d.items() if k not in SPEED_ONLY_SETTINGS}

    now = json.loads(json.dumps(vars(config)))  # as saved: tuples become lists
    return answers_depend_on(saved or {}) == answers_depend_on(now)


def stop_token_ids(tokenizer: Any, model: Any = None) -> set[int]:
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_cfg = getattr(getattr(model, "original_model", None), "generation_config", None)
    eos = getattr(gen_cfg, "eos_token_id", None)
    if eos is not None:
        ids.update(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))
    return ids


def _newline_token_ids(tokenizer: Any) -> set[int]:
    """Every vocabulary entry whose text contains a newline (a base model's answer ends there)."""
    cached = getattr(tokenizer, "_tl_truth_newline_ids", None)
    if cached is None:
        vocab_size = len(tokenizer)
        texts = tokenizer.batch_decode([[i] for i in range(vocab_size)])
        cached = {i for i, t in enumerate(texts) if "\n" in t}
        try:
            tokenizer._tl_truth_newline_ids = cached
        except AttributeError:
            pass
    return cached


def tokenize_prompts(tokenizer: Any, prompts: Sequence[str], fmt: PromptFormat) -> list[list[int]]:
    # Chat-template text already holds its special tokens: adding them again would double BOS.
    add = not fmt.template_has_special_tokens
    return [tokenizer(p, add_special_tokens=add).input_ids for p in prompts]


@torch.no_grad()
def generate_ids(
    model: Any,
    prompt_ids: Sequence[Sequence[int]],
    config: GenerationConfig | None = None,
    stop_at_newline: bool = False,
    progress: bool = True,
    desc: str = "generate",
) -> list[list[dict]]:
    """Decode from token-id prompts. Returns, per prompt, K dicts of answer ids / logprobs / stop."""
    cfg = config or GenerationConfig()
    if cfg.num_samples > 1 and cfg.temperature <= 0:
        raise ValueError("num_samples > 1 needs temperature > 0 (greedy samples are identical)")
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("empty prompt: every prompt needs at least one token")
    n_ctx = getattr(model.cfg, "n_ctx", None)
    longest = max((len(p) for p in prompt_ids), default=0)
    if n_ctx and longest + cfg.max_new_tokens > n_ctx:
        raise ValueError(
            f"prompt of {longest} tokens + {cfg.max_new_tokens} new tokens exceeds the "
            f"model's context of {n_ctx} tokens"
        )
    tok = model.tokenizer
    device = model_device(model)
    stops = stop_token_ids(tok, model) | set(cfg.extra_stop_ids)
    newline_ids = _newline_token_ids(tok) if stop_at_newline else set()
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else next(iter(stops), 0)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)

    # Each sample is its own row; sort rows by prompt length so batches pad little.
    rows = [(i, k) for i in range(len(prompt_ids)) for k in range(cfg.num_samples)]
    rows.sort(key=lambda r: len(prompt_ids[r[0]]))
    out: list[list[dict | None]] = [[None] * cfg.num_samples for _ in prompt_ids]
    bar = tqdm(total=len(rows), desc=desc, disable=not progress, unit="ans")
    for start in range(0, len(rows), cfg.batch_size):
        batch_rows = rows[start : start + cfg.batch_size]
        results = _decode_batch(
            model,
            [prompt_ids[i] for i, _ in batch_rows],
            cfg,
            stops,
            newline_ids,
            pad_id,
            device,
            gen,
        )
        for (i, k), res in zip(batch_rows, results, strict=False):
            out[i][k] = res
        bar.update(len(batch_rows))
    bar.close()
    return out  # type: ignore[return-value]


def _shared_prompts(prompts: Sequence[Sequence[int]]) -> tuple[list, Int[Tensor, " rows"]]:
    """Consecutive identical prompts (the K samples of a question) and each row's prompt."""
    unique: list = []
    index = []
    for p in prompts:
        if not unique or list(p) != list(unique[-1]):
            unique.append(p)
        index.append(len(unique) - 1)
    return unique, torch.tensor(index)


def _left_pad(prompts, pad_id) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    lengths = torch.tensor([len(p) for p in prompts])
    width = int(lengths.max())
    pads = width - lengths
    tokens = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):
        tokens[r, pads[r] :] = torch.tensor(p)
        mask[r, pads[r] :] = 1
    return tokens, mask, pads, lengths


def _decode_batch(model, prompts, cfg, stops, newline_ids, pad_id, device, gen) -> list[dict]:
    batch = len(prompts)
    # With the cache, rows that share a prompt (K samples) share one prompt pass: the cache is
    # then repeated row-wise. Without it every pass re-runs the sequence, so rows stay rows.
    first, index = prompts, None  # the prompt pass's rows; `index`: row -> its prompt-pass row
    if cfg.use_cache and cfg.share_prompt_pass:
        unique, shared = _shared_prompts(prompts)
        if len(unique) < batch:
            first, index = unique, shared
    tokens, mask, pads0, lengths0 = _left_pad(first, pad_id)
    pads = pads0 if index is None else pads0[index]
    lengths = lengths0 if index is None else lengths0[index]
    step_fn = _stepper(model, len(tokens), cfg.use_cache)

    def forward(feed, feed_mask, offset, step, row_pads, row_lengths) -> Tensor:
        # Without the cache each pass re-runs the whole sequence from position 0.
        state = DecodeState(
            offset if cfg.use_cache else 0, row_pads.to(device), row_lengths.to(device), step
        )
        token_ = _STATE.set(state)
        try:
            return step_fn(feed, feed_mask)[:, -1].float()
        finally:
            _STATE.reset(token_)

    logits = forward(tokens.to(device), mask.to(device), 0, 0, pads0, lengths0)
    offset = tokens.shape[1]
    if index is not None:
        step_fn.expand(index.to(device))
        logits = logits[index.to(logits.device)]
    answers: list[list[int]] = [[] for _ in range(batch)]
    logprobs: list[list[float]] = [[] for _ in range(batch)]
    stop_reason = ["max_tokens"] * batch
    stop_tok: list[int | None] = [None] * batch
    done = torch.zeros(batch, dtype=torch.bool)
    for step in range(cfg.max_new_tokens):
        logp = torch.log_softmax(logits, dim=-1).cpu()
        if cfg.temperature > 0:
            probs = torch.softmax(logits.cpu() / cfg.temperature, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=gen).squeeze(1)
        else:
            nxt = logits.argmax(-1).cpu()
        for r in range(batch):
            if done[r]:
                continue
            t = int(nxt[r])
            if t in stops or t in newline_ids:
                done[r] = True
                stop_reason[r] = "eos" if t in stops else "newline"
                stop_tok[r] = t
                continue
            answers[r].append(t)
            logprobs[r].append(float(logp[r, t]))
        if bool(done.all()) or step == cfg.max_new_tokens - 1:
            break
        # Finished rows keep decoding a pad token (masked in) so shapes stay rectangular.
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        feed_mask = torch.ones((batch, 1), dtype=torch.long, device=device)
        logits = forward(nxt[:, None].to(device), feed_mask, offset, step + 1, pads, lengths)
        offset += 1
    return [
        {
            "answer_token_ids": answers[r],
            "token_logprobs": logprobs[r],
            "stop_reason": stop_reason[r],
            "stop_token_id": stop_tok[r],
        }
        for r in range(batch)
    ]


def generate(
    model: Any,
    questions: Sequence[Any],
    config: GenerationConfig | None = None,
    fmt: PromptFormat | None = None,
    progress: bool = True,
) -> list[list[Generation]]:
    """Answer questions (Question objects or strings). Returns K Generations per question."""
    cfg = config or GenerationConfig()
    fmt = fmt or default_format(model)
    tok = model.tokenizer
    texts = [q if isinstance(q, str) else q.question for q in questions]
    prompts = [fmt.render(tok, t) for t in texts]
    prompt_ids = tokenize_prompts(tok, prompts, fmt)
    stop_nl = fmt.stop_at_newline if cfg.stop_at_newline is None else cfg.stop_at_newline
    t0 = time.perf_counter()
    raw = generate_ids(model, prompt_ids, cfg, stop_at_newline=stop_nl, progress=progress)
    elapsed = time.perf_counter() - t0
    result = []
    for prompt, ids, samples in zip(prompts, prompt_ids, raw, strict=False):
        result.append(
            [
                Generation(
                    prompt=prompt,
                    prompt_token_ids=list(ids),
                    text=tok.decode(s["answer_token_ids"], clean_up_tokenization_spaces=False),
                    sample_index=k,
                    **s,
                )
                for k, s in enumerate(samples)
            ]
        )
    object.__setattr__(model, "_tl_truth_last_generate_s", elapsed)
    return result
