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

import json
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from tl_truth.answers.decode_step import _STATE, DecodeState, _stepper
from tl_truth.answers.decode_step import decode_state as decode_state
from tl_truth.answers.prefix_cache import (
    MIN_SHARED_PREFIX,
    equal_length_groups,
    expanded_copy,
    left_pad,
    prefill,
    shared_prefix_len,
    sliding_window,
)
from tl_truth.answers.prompts import PromptFormat, default_format
from tl_truth.answers.token_acts import TokenRecorder
from tl_truth.checkpoint import JsonlCheckpoint, batches, digest
from tl_truth.models import model_device, model_info


@dataclass
class Generation:
    """One answer, with the exact token ids the model saw and produced (made by `generate`).

    The full sequence fed to the model is `prompt_token_ids + answer_token_ids` (unpadded).
    The stop token (EOS, or a newline token for base models) is not part of the answer: it was
    produced but never fed back; it is kept in `stop_token_id`.

    Args:
        prompt: the prompt text (template applied).
        prompt_token_ids: the prompt's token ids, unpadded, special tokens included.
        answer_token_ids: the generated token ids, without the stop token.
        text: `answer_token_ids` decoded.
        token_logprobs: the log-probability of each generated token (full softmax, T = 1).
        stop_reason: "eos", "newline" or "max_tokens".
        stop_token_id: the token that stopped generation, or None at "max_tokens".
        sample_index: 0 for greedy; 0..K-1 for the K samples of a question.

    >>> g = Generation("Q: Hi?\\nA:", [0, 5], [7, 8], " yo", [-0.1, -0.2], "eos", 1)
    >>> g.full_token_ids, g.to_dict()["stop_reason"]
    ([0, 5, 7, 8], 'eos')
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
        """`prompt_token_ids + answer_token_ids`: the sequence whose activations we read."""
        return self.prompt_token_ids + self.answer_token_ids

    def to_dict(self) -> dict:
        """The fields as a plain dict."""
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Decoding

# `on_batch(rows, results, acts)`: (prompt, sample) pairs, their result dicts, and their
# recorded activations (None: no recorder, or the batch came from the checkpoint).
BatchCallback = Callable[[list[tuple[int, int]], list[dict], "list[Tensor] | None"], None]


@dataclass
class GenerationConfig:
    """How to generate: greedy by default, K samples at a temperature on request.

    Args:
        max_new_tokens: the most tokens an answer may have (the stop token not counted).
        temperature: 0 for greedy decoding; above 0, sample at this temperature.
        num_samples: K answers per question (needs `temperature > 0`).
        batch_size: rows (prompts x samples) decoded together.
        stop_at_newline: stop at a newline token; None follows the prompt format (yes for
            plain Q/A prompts, no for chat).
        seed: the seed of the sampler (a CPU `torch.Generator`).
        use_cache: decode with the model's KV cache (False re-runs the sequence every step:
            slow, for tests and debugging).
        extra_stop_ids: token ids that end an answer besides EOS.
        share_prompt_pass: the K samples of a prompt share one prompt pass (speed only).

    >>> cfg = GenerationConfig(max_new_tokens=8, temperature=0.7, num_samples=3)
    >>> cfg.max_new_tokens, cfg.num_samples, GenerationConfig().temperature
    (8, 3, 0.0)
    """

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
    checkpoint: str | Path | None = None,
    share_prefix: bool = False,
    record: TokenRecorder | None = None,
    on_batch: BatchCallback | None = None,
    drop_finished: bool = False,
) -> list[list[dict]]:
    """Decode from token-id prompts (the loop under `generate`, for prompts already tokenised).

    With `share_prefix`, a token prefix common to every prompt (e.g. a few-shot instruction)
    is run once and its KV cache copied to each batch; each batch's suffixes are left-padded
    after it (on a local-attention model whose window the padding could reach, rows batch by
    equal suffix length instead). Same tokens as without it up to floating-point ties.

    With `checkpoint`, every finished batch is appended to that JSONL file (with the sampler's
    random state), and a re-run with the same prompts, settings and model skips the batches
    already there: a killed run resumes with the results an uninterrupted one gives, token for
    token. The caller deletes the file once the results are stored. Inside
    `tl_truth.parallel.sharded`, each rank decodes its share of the batches (greedy only) and
    the ranks swap their results: every rank returns every answer (see `JsonlCheckpoint`).

    With `record` (a `TokenRecorder`), the loop's own hooks keep each row's activations at its
    last prompt token and at every answer token, and `on_batch(rows, results, acts)` gets them
    after each batch: `rows` the (prompt, sample) pairs, `results` their dicts, `acts` one
    `[n_hooks, 1 + n_answer, d_model]` tensor per row (None for a batch read back from the
    checkpoint: activations are not checkpointed). Inside `sharded`, other ranks' batches reach
    `on_batch` after the loop, without activations.

    Args:
        model: a HookedTransformer or TransformerBridge (`tl_truth.load_model`).
        prompt_ids: one list of token ids per prompt (unpadded, non-empty).
        config: generation settings (`GenerationConfig()` by default).
        stop_at_newline: also stop at any token whose text holds a newline.
        progress: show a progress bar.
        desc: the progress bar's label (and the checkpoint's stage name).
        checkpoint: a JSONL file to append finished batches to and resume from (None: off).
        share_prefix: run the prompts' common token prefix once (when >= 32 tokens).
        record: a `TokenRecorder` whose hooks run while each batch decodes (None: none).
        on_batch: called after every batch with its rows, results and recorded activations.
        drop_finished: greedy, without `record`: rows that stopped leave the batch (and their
            KV cache) instead of decoding padding until the longest row ends. For short
            answers behind a long prompt (the model-based extraction) this saves most of the
            decoding; the other rows' tokens can differ only where a changed batch size moves
            a floating-point near-tie.

    Returns:
        Per prompt, K dicts (K = `config.num_samples`) with ``answer_token_ids``,
        ``token_logprobs``, ``stop_reason`` and ``stop_token_id``.

    Raises:
        ValueError: an empty prompt, a prompt too long for the context, K > 1 when greedy,
            or `drop_finished` with sampling or `record`.

    >>> from tl_truth.testing import tiny_model
    >>> model = tiny_model("llama")
    >>> ids = [model.tokenizer("Q: What is 2 + 2?\\nA:").input_ids]
    >>> cfg = GenerationConfig(max_new_tokens=3, temperature=1.0, num_samples=2)
    >>> out = generate_ids(model, ids, cfg, progress=False)
    >>> len(out), len(out[0]), sorted(out[0][0])
    (1, 2, ['answer_token_ids', 'stop_reason', 'stop_token_id', 'token_logprobs'])
    >>> len(out[0][0]["answer_token_ids"]) <= 3
    True
    """
    cfg = config or GenerationConfig()
    if cfg.num_samples > 1 and cfg.temperature <= 0:
        raise ValueError("num_samples > 1 needs temperature > 0 (greedy samples are identical)")
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("empty prompt: every prompt needs at least one token")
    if drop_finished and (cfg.temperature > 0 or record is not None):
        raise ValueError(
            "drop_finished is for greedy decoding without a recorder: sampling draws one "
            "random number per row of the batch, and the recorder needs every row's passes"
        )
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
    ckpt = JsonlCheckpoint(
        checkpoint,
        key=digest(
            "generate_ids",
            vars(cfg),
            stop_at_newline,
            share_prefix and "padded",  # its batches differ from the first (equal-length) ones
            model_info(model).fingerprint,
            prompt_ids,
            *(["drop_finished"] if drop_finished else []),
        ),
        stage=desc,
    )
    prefix_len = shared_prefix_len(prompt_ids) if share_prefix and cfg.use_cache else 0
    window = sliding_window(model)
    if prefix_len < MIN_SHARED_PREFIX:
        prefix_len = 0
    if prefix_len and window is not None and longest + cfg.max_new_tokens > window:
        # A local-attention window counts padding too: padding between the prefix and a
        # suffix would push real tokens out of it. Rows of equal suffix length need none.
        groups = equal_length_groups(rows, prompt_ids, prefix_len, cfg.batch_size)
    else:  # each batch's suffixes are left-padded after the shared prefix (prefix, pads,
        # suffix): both backends derive positions from the mask, so the gap is invisible
        groups = [rows[start:end] for _, start, end in batches(len(rows), cfg.batch_size)]
    if ckpt.ranks.parallel and cfg.temperature > 0:
        raise ValueError(
            "data-parallel generation is greedy only (temperature 0): one process samples from "
            "one random stream through all batches, which shards cannot reproduce"
        )
    mine = set(ckpt.pending(len(groups)))  # data parallel: this rank's share of them
    touched = [b for b in range(len(groups)) if b in mine or b in ckpt.done()]
    prefix_stepper = None

    def decode(b: int) -> dict:
        nonlocal prefix_stepper
        batch_rows = groups[b]
        prefilled = None
        if prefix_len:
            if prefix_stepper is None:
                prefix_stepper = prefill(model, prompt_ids[0][:prefix_len], device)
            prefilled = (expanded_copy(prefix_stepper, len(batch_rows), device), prefix_len)
        if record is not None:
            record.begin()
        with record.attached(model) if record else nullcontext():
            results = _decode_batch(
                model,
                [prompt_ids[i][prefix_len:] for i, _ in batch_rows],
                cfg,
                stops,
                newline_ids,
                pad_id,
                device,
                gen,
                prefilled=prefilled,
                recorder=record,
                drop_finished=drop_finished,
            )
        if record is not None:
            fresh[b] = record.take([len(r["answer_token_ids"]) for r in results])
        # the sampler's state after the batch, so a resumed run continues the same stream
        return {"results": results, "rng": gen.get_state().tolist()}

    fresh: dict[int, Any] = {}  # batch -> its recorded activations, when decoded just now
    total = sum(len(groups[b]) for b in touched)
    bar = tqdm(total=total, desc=desc, disable=not progress, unit="ans")
    for b in touched:  # in order: a finished batch restores the sampler's state after it
        item = ckpt.get_or_compute(b, lambda b=b: decode(b))
        gen.set_state(torch.tensor(item["rng"], dtype=torch.uint8))  # a no-op when just decoded
        if on_batch is not None:  # per batch, so recorded activations never pile up
            on_batch(groups[b], item["results"], fresh.pop(b, None))
        bar.update(len(groups[b]))
    bar.close()
    seen = set(touched)
    for b, (batch_rows, item) in enumerate(zip(groups, ckpt.gather(len(groups)), strict=True)):
        for (i, k), res in zip(batch_rows, item["results"], strict=True):
            out[i][k] = res
        if on_batch is not None and b not in seen:  # another rank's batch: no activations
            on_batch(batch_rows, item["results"], None)
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


def _decode_batch(
    model,
    prompts,
    cfg,
    stops,
    newline_ids,
    pad_id,
    device,
    gen,
    prefilled=None,
    recorder=None,
    drop_finished=False,
) -> list[dict]:
    """Decode one batch. `prefilled`: (stepper, prefix length) whose cache already holds a
    prefix shared by every row (`prompts` are then the suffixes after it, left-padded).
    `recorder`: a `TokenRecorder` whose hooks are on (it needs the last token fed too).
    `drop_finished`: finished rows leave the stepper's batch (`live`: the rows it holds)."""
    batch = len(prompts)
    # With the cache, rows that share a prompt (K samples) share one prompt pass: the cache is
    # then repeated row-wise. Without it every pass re-runs the sequence, so rows stay rows.
    first, index = prompts, None  # the prompt pass's rows; `index`: row -> its prompt-pass row
    if cfg.use_cache and cfg.share_prompt_pass and prefilled is None:
        unique, shared = _shared_prompts(prompts)
        if len(unique) < batch:
            first, index = unique, shared
    tokens, mask, pads0, lengths0 = left_pad(first, pad_id)
    offset0 = 0
    if prefilled is not None:
        step_fn, offset0 = prefilled
        lengths0 = lengths0 + offset0  # rows are prefix + suffix
    else:
        step_fn = _stepper(model, len(tokens), cfg.use_cache)
    pads = pads0 if index is None else pads0[index]
    lengths = lengths0 if index is None else lengths0[index]

    def forward(feed, feed_mask, offset, step, row_pads, row_lengths) -> Tensor:
        # Without the cache each pass re-runs the whole sequence from position 0.
        state = DecodeState(
            offset if cfg.use_cache else 0, row_pads.to(device), row_lengths.to(device), step
        )
        token_ = _STATE.set(state)
        try:
            return step_fn(feed, feed_mask, last_only=True)[:, -1].float()
        finally:
            _STATE.reset(token_)

    logits = forward(tokens.to(device), mask.to(device), offset0, 0, pads0, lengths0)
    offset = offset0 + tokens.shape[1]
    if index is not None:
        step_fn.expand(index.to(device))
        logits = logits[index.to(logits.device)]
        if recorder is not None:
            recorder.expand(index)
    answers: list[list[int]] = [[] for _ in range(batch)]
    logprobs: list[list[float]] = [[] for _ in range(batch)]
    stop_reason = ["max_tokens"] * batch
    stop_tok: list[int | None] = [None] * batch
    done = torch.zeros(batch, dtype=torch.bool)
    live = torch.arange(batch)  # the batch rows the stepper holds (all, unless drop_finished)
    for step in range(cfg.max_new_tokens):
        if cfg.temperature > 0:
            probs = torch.softmax(logits.cpu() / cfg.temperature, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=gen).squeeze(1)
        else:
            nxt = logits.argmax(-1).cpu()
        # log p(chosen token) = its logit - logsumexp: no full log-softmax of the vocabulary
        chosen = logits.gather(1, nxt[:, None].to(logits.device))[:, 0]
        chosen_logp = (chosen - torch.logsumexp(logits, dim=-1)).tolist()
        for j, (r, t) in enumerate(zip(live.tolist(), nxt.tolist(), strict=True)):
            if done[r]:  # j: the stepper's row, r: the batch row
                continue
            if t in stops or t in newline_ids:
                done[r] = True
                stop_reason[r] = "eos" if t in stops else "newline"
                stop_tok[r] = t
                continue
            answers[r].append(t)
            logprobs[r].append(chosen_logp[j])
        if bool(done.all()) or step == cfg.max_new_tokens - 1:
            break
        finished = done[live]
        if drop_finished and int(finished.sum()) >= max(1, len(live) // 8):
            # One index_select of the cache (a step copies it several times anyway).
            keep = (~finished).nonzero()[:, 0]
            step_fn.expand(keep.to(device))
            live, nxt, finished = live[keep], nxt[keep], finished[keep]
        # Finished rows keep decoding a pad token (masked in) so shapes stay rectangular.
        nxt = torch.where(finished, torch.full_like(nxt, pad_id), nxt)
        feed_mask = torch.ones((len(live), 1), dtype=torch.long, device=device)
        logits = forward(
            nxt[:, None].to(device), feed_mask, offset, step + 1, pads[live], lengths[live]
        )
        offset += 1
    if recorder is not None and cfg.max_new_tokens > 0 and not bool(done.all()):
        # Rows that ran to max_new_tokens: their last token was never fed. One more pass feeds
        # it, only so the recorder sees its activation (the logits are not used).
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        feed_mask = torch.ones((batch, 1), dtype=torch.long, device=device)
        forward(nxt[:, None].to(device), feed_mask, offset, step + 1, pads, lengths)
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
    checkpoint: str | Path | None = None,
    record: TokenRecorder | None = None,
    on_batch: Callable[[list[tuple[int, Generation]], list[Tensor] | None], None] | None = None,
) -> list[list[Generation]]:
    """Answer questions: render the prompts, tokenise them and decode (hooks fire every step).

    Args:
        model: a HookedTransformer or TransformerBridge (`tl_truth.load_model`).
        questions: `Question`s or question strings.
        config: generation settings (greedy, 48 new tokens by default).
        fmt: the prompt format (default: `default_format(model)`).
        progress: show a progress bar.
        checkpoint: a JSONL file that finished batches are appended to, so a killed call
            resumes where it stopped with identical results (see `generate_ids`).
        record: a `TokenRecorder` run inside the decode loop (see `generate_ids`).
        on_batch: called after each batch with its (question index, `Generation`) pairs and
            their recorded activations (None without `record`, or for a checkpointed batch).

    Returns:
        Per question, `config.num_samples` `Generation`s, in question order.

    >>> from tl_truth.testing import tiny_model
    >>> model = tiny_model("llama")  # random weights: the text is gibberish
    >>> gens = generate(model, ["What is 2 + 2?", "Name a city."],
    ...                 GenerationConfig(max_new_tokens=5), progress=False)
    >>> len(gens), len(gens[0]), gens[0][0].prompt
    (2, 1, 'Q: What is 2 + 2?\\nA:')
    >>> g = gens[0][0]
    >>> len(g.answer_token_ids) == len(g.token_logprobs) <= 5
    True
    """
    cfg = config or GenerationConfig()
    fmt = fmt or default_format(model)
    tok = model.tokenizer
    texts = [q if isinstance(q, str) else q.question for q in questions]
    prompts = [fmt.render(tok, t) for t in texts]
    prompt_ids = tokenize_prompts(tok, prompts, fmt)
    stop_nl = fmt.stop_at_newline if cfg.stop_at_newline is None else cfg.stop_at_newline

    made: dict[tuple[int, int], Generation] = {}

    def make(i: int, k: int, s: dict) -> Generation:
        if (i, k) not in made:
            text = tok.decode(s["answer_token_ids"], clean_up_tokenization_spaces=False)
            made[i, k] = Generation(prompts[i], list(prompt_ids[i]), text=text, sample_index=k, **s)
        return made[i, k]

    batch_done = None
    if on_batch is not None:

        def batch_done(rows, results, acts) -> None:
            on_batch([(i, make(i, k, s)) for (i, k), s in zip(rows, results, strict=True)], acts)

    t0 = time.perf_counter()
    raw = generate_ids(
        model,
        prompt_ids,
        cfg,
        stop_at_newline=stop_nl,
        progress=progress,
        checkpoint=checkpoint,
        record=record,
        on_batch=batch_done,
    )
    elapsed = time.perf_counter() - t0
    result = [[make(i, k, s) for k, s in enumerate(samples)] for i, samples in enumerate(raw)]
    object.__setattr__(model, "_tl_truth_last_generate_s", elapsed)
    return result
