"""The lm-evaluation-harness model type `xlstm_lm`: the harness's tasks scored by our checkpoints (DESIGN.md §12).

The harness finds no model plugins, so importing this module registers the type; then either

    xlstm-lm-eval --model xlstm_lm --model_args pretrained=<run dir>/export --tasks lambada_openai --batch_size 8

(lm_eval's own command line, `xlstm_lm.cli.harness`) or, in Python, `import xlstm_lm.cli.lm_eval_model` and
`lm_eval.simple_evaluate(model="xlstm_lm", model_args="pretrained=<export>", tasks=[...])`.

Every text follows an end-of-document token, as every document does in training. The three request kinds:

- `loglikelihood`: log P(continuation | context), the training loss's log-softmax over the model's whole
  (padded) vocabulary; "greedy" compares with the argmax over the tokenizer's ids, as generation chooses.
  Requests are sorted by length and scored `batch_size` at a time, right-padded: a causal model's output at a
  position never sees later tokens, so the padding changes nothing that is scored (tested).
- `loglikelihood_rolling`: a recurrent model scores a whole document as one sequence, run in pieces of
  `max_length` tokens with the state carried: every token sees the whole document before it, and memory
  does not grow with the document. The Transformer, whose cache does grow, uses the harness's rolling windows
  of `max_length` tokens instead (each token scored once, a window attends to at most `max_length` tokens).
- `generate_until`: our state-carrying generator, each request stopped at the first stop string (cut off the
  returned text), the end-of-document token or `max_gen_toks`. Requests with the same generation arguments
  run `batch_size` at a time (`generation.generate_many`: each prompt is read alone, then one decode step
  serves all unfinished rows of a recurrent model; every row gets exactly what it gets alone).

`max_length` is thus a memory bound for recurrent models (results do not depend on it; nothing is truncated)
and the context of the Transformer (longer contexts keep their last tokens, as the harness's HF models do).
"""

from __future__ import annotations

import json
import logging
from typing import Optional

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from xlstm_lm.data.tokenizer import eos_id
from xlstm_lm.evaluation.generation import GenerationConfig, generate_many
from xlstm_lm.cli.loading import load_checkpoint, resolve_device
from xlstm_lm.evaluation.perplexity import forward_pieces, token_nll

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


@register_model("xlstm_lm")
class XLSTMHarnessLM(TemplateLM):
    """An export folder or Lightning .ckpt of this project as an lm_eval model.

    Args:
        pretrained: the checkpoint (`xlstm_lm.cli.loading.load_checkpoint`).
        tokenizer: a tokenizer.json to use instead of the checkpoint's own.
        device: "auto" (the GPU when there is one), "cpu", "cuda", "cuda:1", ...
        dtype: the weights' dtype: float32, bfloat16, float16 or float64.
        batch_size: requests scored per forward pass (a number; lm_eval's "auto" is not supported).
        max_length: tokens per forward pass of a recurrent model (the state is carried between passes), the
            context of the Transformer.
        max_gen_toks: tokens `generate_until` generates at most when a task does not say.
    """

    def __init__(self, pretrained: str, tokenizer: Optional[str] = None, device: Optional[str] = "auto",
                 dtype: str = "float32", batch_size: int | str = 1, max_length: int = 2048,
                 max_gen_toks: int = 256) -> None:
        super().__init__()
        if not str(batch_size).isdigit() or int(batch_size) < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if int(max_length) < 1 or int(max_gen_toks) < 1:
            raise ValueError(f"max_length and max_gen_toks must be positive, got {max_length}, {max_gen_toks}")
        self._device = resolve_device(device or "auto")
        model, self.tokenizer = load_checkpoint(pretrained, tokenizer, self._device)
        self.model = model.to(DTYPES[dtype])
        self.batch_size = int(batch_size)
        self.max_length = int(max_length)
        self.max_gen_toks = int(max_gen_toks)
        self.vocab_size = self.tokenizer.get_vocab_size()
        self.recurrent = getattr(model, "is_recurrent", True)

    @property
    def eot_token_id(self) -> int:
        return eos_id(self.tokenizer)

    def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None, **kwargs) -> list[int]:
        """The text's token ids after the end-of-document token (without it when `add_special_tokens` is False)."""
        ids = self.tokenizer.encode(string).ids
        return ids if add_special_tokens is False else [self.eot_token_id, *ids]

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """(log-probability, greedy) of each ((context, continuation), context ids, continuation ids)."""
        results = self._score_pairs([(context, continuation) for _, context, continuation in requests], disable_tqdm)
        for (request, _, _), result in zip(requests, results):
            if request is not None:
                self.cache_hook.add_partial("loglikelihood", request, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-probability of each whole text after the end-of-document token (module docstring)."""
        pairs, owner = [], []
        for index, request in enumerate(requests):
            tokens = self.tok_encode(request.args[0], add_special_tokens=False)
            if not tokens:
                continue
            if self.recurrent:
                windows = [([self.eot_token_id], tokens)]
            else:
                windows = [make_disjoint_window(window) for window in
                           get_rolling_token_windows(tokens, self.eot_token_id, self.max_length, context_len=1)]
            pairs += windows
            owner += [index] * len(windows)
        totals = [0.0] * len(requests)
        for index, (logprob, _) in zip(owner, self._score_pairs(pairs, disable_tqdm)):
            totals[index] += logprob
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """The continuation of each context, cut before the first of its stop strings; requests with the same
        generation arguments continue `batch_size` at a time (`generation.generate_many`)."""
        texts: list[Optional[str]] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(index)
        progress = tqdm(total=len(requests), desc="generate_until", disable=disable_tqdm)
        for indices in groups.values():
            until, cfg = self._generation_config(requests[indices[0]].args[1])
            prompts = {index: self._generation_prompt(requests[index].args[0], cfg) for index in indices}
            indices.sort(key=lambda index: len(prompts[index]))  # similar lengths: rows finish close together
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start:start + self.batch_size]
                generations = generate_many(self.model, [prompts[index] for index in batch], cfg,
                                            eos_id=self.eot_token_id, vocab_size=self.vocab_size,
                                            stops=[self._reached(until)] * len(batch) if until else None)
                for index, generation in zip(batch, generations):
                    text = self.tokenizer.decode(generation.token_ids)
                    for stop in until:
                        text = text.split(stop)[0]
                    self.cache_hook.add_partial("generate_until", requests[index].args, text)
                    texts[index] = text
                progress.update(len(batch))
        progress.close()
        return texts

    def _generation_prompt(self, context: str, cfg: GenerationConfig) -> list[int]:
        """The context's ids; for the Transformer its last ones, so that they and the new tokens fit the context."""
        prompt = self.tok_encode(context)
        return prompt if self.recurrent else prompt[-max(self.max_length - cfg.max_new_tokens, 1):]

    def _reached(self, until: list[str]):
        """Whether new tokens already spell one of the stop strings."""
        def reached_stop(tokens: list[int]) -> bool:
            text = self.tokenizer.decode(tokens)
            return any(stop in text for stop in until)
        return reached_stop

    def _generation_config(self, gen_kwargs: dict) -> tuple[list[str], GenerationConfig]:
        """A task's generation arguments as stop strings and our GenerationConfig (greedy unless do_sample)."""
        kwargs = dict(gen_kwargs)
        until = handle_stop_sequences(kwargs.pop("until", None), eos=None)
        max_new_tokens = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
        temperature = float(kwargs.pop("temperature", 0.0))
        do_sample = kwargs.pop("do_sample", temperature > 0)
        cfg = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature if do_sample else 0.0,
                               top_k=kwargs.pop("top_k", None), top_p=float(kwargs.pop("top_p", 1.0)),
                               seed=int(kwargs.pop("seed", 0)), prefill_length=self.max_length)
        if kwargs:
            log.warning("generate_until ignores the generation arguments %s", sorted(kwargs))
        return until, cfg

    def _score_pairs(self, pairs: list[tuple[list[int], list[int]]],
                     disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(log-probability, greedy) of each (context ids, continuation ids), `batch_size` pairs per forward."""
        rows = [self._row(context, continuation) for context, continuation in pairs]
        order = sorted(range(len(rows)), key=lambda index: -len(rows[index]))  # similar lengths share a batch
        results: list[tuple[float, bool]] = [(0.0, True)] * len(rows)
        for start in tqdm(range(0, len(order), self.batch_size), desc="loglikelihood", disable=disable_tqdm):
            batch = order[start:start + self.batch_size]
            ids = torch.full((len(batch), len(rows[batch[0]])), self.eot_token_id)  # (B, S + 1), EOS-padded
            for row, index in enumerate(batch):
                ids[row, :len(rows[index])] = torch.tensor(rows[index])
            logprobs, greedy = self._token_scores(ids[:, :-1], ids[:, 1:])  # (B, S) each
            for row, index in enumerate(batch):
                end, scored = len(rows[index]) - 1, len(pairs[index][1])
                results[index] = (float(logprobs[row, end - scored:end].sum()),
                                  bool(greedy[row, end - scored:end].all()))
        return results

    def _row(self, context: list[int], continuation: list[int]) -> list[int]:
        """The tokens one request runs over: all for a recurrent model, the last max_length + 1 for the Transformer."""
        if not continuation:
            raise ValueError("a loglikelihood request needs a non-empty continuation")
        tokens = context + continuation
        if self.recurrent:
            return tokens
        if len(continuation) > self.max_length:
            raise ValueError(f"a continuation of {len(continuation)} tokens does not fit the Transformer's "
                             f"max_length={self.max_length}")
        return tokens[-(self.max_length + 1):]

    @torch.inference_mode()
    def _token_scores(self, input_ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability of each label and whether it is the argmax over the tokenizer's ids; (B, S) each."""
        input_ids, labels = input_ids.to(self._device), labels.to(self._device)
        logprobs, greedy, start = [], [], 0
        for logits in forward_pieces(self.model, input_ids, self.max_length if self.recurrent else None):
            piece = labels[:, start:start + logits.shape[1]]
            logprobs.append(-token_nll(logits, piece))
            greedy.append(logits[..., :self.vocab_size].argmax(dim=-1) == piece)
            start += logits.shape[1]
        return torch.cat(logprobs, dim=1).double().cpu(), torch.cat(greedy, dim=1).cpu()
