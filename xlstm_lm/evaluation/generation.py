"""Text generation from a carried state: prefill the prompt once, then one token per forward (DESIGN.md §12).

Several prompts continue together (`generate_many`): each is read alone, then one decode step serves every
unfinished row of a recurrent model, whose states stack whatever the prompts' lengths.

The prompt runs in one forward pass with `return_state=True`; every new token is then fed alone with the
state of the previous step (`decode_step`: the cells' step functions), so a recurrent model spends constant time and memory per token and the
Transformer extends its KV cache (the same interface). Because the state carries the whole history, the
logits of every step equal those of one pass over prompt + generated tokens (tested).

Sampling: temperature 0 is greedy (argmax); otherwise the logits are divided by the temperature, cut to
the `top_k` largest and to the smallest set whose probability reaches `top_p` (nucleus), and sampled with
a generator seeded from `seed`.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable
from typing import Optional

import torch
from torch.utils._pytree import tree_map

from xlstm_lm.models import LanguageModel


@dataclass
class GenerationConfig:
    """How tokens are chosen.

    Attributes:
        max_new_tokens: tokens to generate at most.
        temperature: softmax temperature; 0 picks the most likely token (greedy).
        top_k: sample among the k most likely tokens; None keeps all.
        top_p: sample among the most likely tokens whose probabilities sum to top_p; 1.0 keeps all.
        seed: seed of the sampling generator.
        stop_at_eos: stop after the end-of-document token.
        prefill_length: prompt tokens per forward pass of the prefill, the state carried between them (a
            long prompt would otherwise hold logits for every one of its tokens at once).
    """

    max_new_tokens: int = 100
    temperature: float = 0.8
    top_k: Optional[int] = 50
    top_p: float = 0.95
    seed: int = 0
    stop_at_eos: bool = True
    prefill_length: int = 2048

    def __post_init__(self) -> None:
        if self.prefill_length < 1:
            raise ValueError(f"gen.prefill_length must be a positive integer, got {self.prefill_length}")
        if self.max_new_tokens < 1:
            raise ValueError(f"gen.max_new_tokens must be a positive integer, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"gen.temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"gen.top_k must be a positive integer or null, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"gen.top_p must be in (0, 1], got {self.top_p}")


@dataclass
class Generation:
    """The generated tokens and, when asked, the logits each one was chosen from.

    Attributes:
        token_ids: the new tokens (the prompt not included).
        logits: (len(token_ids), V) float32 logits of each step, or None.
    """

    token_ids: list[int]
    logits: Optional[torch.Tensor] = None


def sample_next(logits: torch.Tensor, cfg: GenerationConfig,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Choose the next token of each row.

    Args:
        logits: (B, V) next-token logits.
        cfg: temperature, top_k and top_p.
        generator: source of randomness (unused when greedy).

    Returns:
        (B,) int64 token ids.
    """
    if cfg.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / cfg.temperature
    if cfg.top_k is not None and cfg.top_k < logits.shape[-1]:
        kth_largest = torch.topk(logits, cfg.top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        outside = probs.cumsum(dim=-1) - probs >= cfg.top_p  # the mass before a token already reaches top_p
        logits = logits.masked_fill(outside.scatter(-1, order, outside), float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


def generate(model: LanguageModel, prompt_ids: list[int], cfg: GenerationConfig, eos_id: Optional[int] = None,
             vocab_size: Optional[int] = None, return_logits: bool = False,
             stop: Optional[Callable[[list[int]], bool]] = None) -> Generation:
    """Continue a prompt one token at a time from the carried state.

    Args:
        model: any language model of the project, in eval mode.
        prompt_ids: the prompt's token ids (at least one).
        cfg: sampling settings and the token budget.
        eos_id: the end-of-document token, where generation stops when `cfg.stop_at_eos`.
        vocab_size: ids at or above are never chosen (the model's vocabulary is padded past the tokenizer's).
        return_logits: keep each step's logits (as the model returned them, before masking).
        stop: called with the new tokens after each one; generation ends when it returns True (stop strings).

    Returns:
        The new tokens, and their logits when asked.
    """
    return generate_many(model, [prompt_ids], cfg, eos_id, vocab_size, return_logits, [stop])[0]


@torch.inference_mode()
def generate_many(model: LanguageModel, prompts: list[list[int]], cfg: GenerationConfig, eos_id: Optional[int] = None,
                  vocab_size: Optional[int] = None, return_logits: bool = False,
                  stops: Optional[list[Optional[Callable[[list[int]], bool]]]] = None) -> list[Generation]:
    """Continue several prompts, each exactly as `generate` continues it alone (its own sampling generator
    seeded from `cfg.seed`), with one decode step for all unfinished rows of a recurrent model: its states have
    one size whatever the prompt's length, so they stack. Each prompt is read alone (lengths differ); a
    finished row leaves the batch. The Transformer's KV caches differ in length: its prompts run one by one.

    Args: as `generate`, with a list of prompts and one stop function (or None) per prompt.
    """
    if any(not prompt for prompt in prompts):
        raise ValueError("the prompt needs at least one token (start it with the end-of-document token)")
    stops = stops if stops is not None else [None] * len(prompts)
    if not model.is_recurrent and len(prompts) > 1:
        return [generate_many(model, [prompt], cfg, eos_id, vocab_size, return_logits, [stop])[0]
                for prompt, stop in zip(prompts, stops)]
    device = next(model.parameters()).device
    prefilled = [_prefill(model, prompt, cfg, device) for prompt in prompts]
    logits = torch.cat([row_logits for row_logits, _ in prefilled])  # (B, V): each row's next-token logits
    state = _stack_states([row_state for _, row_state in prefilled], model.state_batch_dim)
    generators = [torch.Generator(device).manual_seed(cfg.seed) for _ in prompts]
    tokens = [[] for _ in prompts]
    step_logits = [[] for _ in prompts]
    active = list(range(len(prompts)))  # the prompt of each row of the batch
    for step in range(cfg.max_new_tokens):
        if return_logits:
            for row, index in enumerate(active):
                step_logits[index].append(logits[row].clone())
        if vocab_size is not None:
            logits = logits.clone()
            logits[:, vocab_size:] = float("-inf")
        chosen = [int(sample_next(logits[row:row + 1], cfg, generators[index])) for row, index in enumerate(active)]
        unfinished = []
        for row, (index, token) in enumerate(zip(active, chosen)):
            tokens[index].append(token)
            stop = stops[index]
            if not ((cfg.stop_at_eos and token == eos_id) or (stop is not None and stop(tokens[index]))):
                unfinished.append(row)
        if step == cfg.max_new_tokens - 1 or not unfinished:
            break
        if len(unfinished) < len(active):
            state = _select_rows(state, unfinished, model.state_batch_dim)
            active, chosen = [active[row] for row in unfinished], [chosen[row] for row in unfinished]
        logits, state = model.decode_step(torch.tensor(chosen, device=device).view(-1, 1), state)
        logits = logits[:, -1]
    return [Generation(row_tokens, torch.stack(row_logits) if return_logits else None)
            for row_tokens, row_logits in zip(tokens, step_logits)]


def _prefill(model: LanguageModel, prompt_ids: list[int], cfg: GenerationConfig, device: torch.device):
    """The prompt read in pieces of `cfg.prefill_length`: its next-token logits (1, V) and the state after it."""
    prompt, state = torch.tensor([prompt_ids], device=device), None
    for start in range(0, prompt.shape[1], cfg.prefill_length):
        logits, state = model(prompt[:, start:start + cfg.prefill_length], state=state, return_state=True)
    return logits[:, -1], state


def _stack_states(states: list, batch_dim: int):
    """One batch's state from the states of single rows (any nesting of lists and tuples of tensors)."""
    if len(states) == 1:
        return states[0]
    return tree_map(lambda *rows: torch.cat(rows, dim=batch_dim) if torch.is_tensor(rows[0]) else rows[0],
                    states[0], *states[1:])


def _select_rows(state, rows: list[int], batch_dim: int):
    """The state of some rows of a batch."""
    return tree_map(lambda tensor: tensor[(slice(None),) * batch_dim + (rows,)] if torch.is_tensor(tensor) else tensor,
                    state)
