"""Generation from a carried state equals one pass over the same tokens; sampling is filtered and seeded."""

import pytest
import torch
from torch import nn

from tests.evaluation.tiny_export import tiny_model
from xlstm_lm.evaluation.generation import GenerationConfig, generate, generate_many, sample_next
from xlstm_lm.models import LanguageModel

PROMPT = [0, 17, 42, 99, 5, 230]


@pytest.mark.parametrize("prefill_length", [2048, 4])  # the prompt in one pass, and in pieces of 4, 2
@pytest.mark.parametrize("kind", ["xlstm", "lstm", "llama", "mamba"])
def test_greedy_steps_equal_one_pass_over_the_generated_text(kind, prefill_length):
    model = tiny_model(kind)
    cfg = GenerationConfig(max_new_tokens=12, temperature=0, stop_at_eos=False, prefill_length=prefill_length)
    generation = generate(model, PROMPT, cfg, return_logits=True)
    assert len(generation.token_ids) == 12
    tokens = torch.tensor([PROMPT + generation.token_ids])
    with torch.no_grad():
        one_pass = model(tokens[:, :-1])[0, len(PROMPT) - 1:]  # (12, V): the logits each new token follows
    torch.testing.assert_close(generation.logits, one_pass, atol=1e-5, rtol=1e-5)
    assert generation.token_ids == one_pass.argmax(dim=-1).tolist()


@pytest.mark.parametrize("kind", ["xlstm", "lstm", "llama"])
def test_many_prompts_continue_as_each_alone(kind):
    # rows of different lengths, stopped at different steps (a stop function, the token budget), sampled: each
    # row gets the tokens and logits it gets alone; in float64 so that batched sums cannot flip a choice
    model = tiny_model(kind).double()
    prompts = [PROMPT, PROMPT[:2], [0, 300, 7, 7, 8, 9, 10, 11, 12, 3]]
    cfg = GenerationConfig(max_new_tokens=10, temperature=1.0, top_k=None, top_p=0.9, seed=5, stop_at_eos=False)
    stops = [None, lambda tokens: len(tokens) == 3, lambda tokens: len(tokens) == 7]
    together = generate_many(model, prompts, cfg, vocab_size=400, return_logits=True, stops=stops)
    for prompt, stop, row in zip(prompts, stops, together):
        alone = generate(model, prompt, cfg, vocab_size=400, return_logits=True, stop=stop)
        assert row.token_ids == alone.token_ids
        torch.testing.assert_close(row.logits, alone.logits, atol=1e-12, rtol=1e-12)
    assert [len(row.token_ids) for row in together] == [10, 3, 7]


def test_sampling_is_reproducible_with_the_seed():
    model = tiny_model("xlstm")
    cfg = GenerationConfig(max_new_tokens=15, temperature=1.5, top_k=None, top_p=1.0, seed=3, stop_at_eos=False)
    first, again = generate(model, PROMPT, cfg), generate(model, PROMPT, cfg)
    other = generate(model, PROMPT, GenerationConfig(**{**cfg.__dict__, "seed": 4}))
    assert first.token_ids == again.token_ids != other.token_ids


def test_top_k_and_top_p_keep_only_the_likely_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(400, 1)  # (400, 4)
    generator = torch.Generator().manual_seed(0)

    def draw(**kw):
        return set(sample_next(logits, GenerationConfig(temperature=1.0, **kw), generator).tolist())

    assert draw(top_k=2, top_p=1.0) == {0, 1}
    assert draw(top_k=None, top_p=0.79) == {0, 1}  # 0.5 + 0.3 passes 0.79: the third token is cut
    assert draw(top_k=None, top_p=0.81) == {0, 1, 2}
    assert draw(top_k=None, top_p=0.4) == {0}
    assert draw(top_k=None, top_p=1.0) == {0, 1, 2, 3}
    assert sample_next(logits[:2], GenerationConfig(temperature=0)).tolist() == [0, 0]


class FavouriteToken(LanguageModel):
    """Always puts the most weight on one token."""

    def __init__(self, token: int, vocab_size: int = 8):
        super().__init__()
        self.token, self.vocab_size = token, vocab_size
        self.weight = nn.Parameter(torch.zeros(1))  # gives the model a device

    def forward(self, input_ids, state=None, doc_starts=None, return_state=False):
        logits = torch.zeros(*input_ids.shape, self.vocab_size)
        logits[..., self.token] = 10.0
        return (logits, state) if return_state else logits


def test_generation_stops_after_the_end_of_document_token():
    cfg = GenerationConfig(max_new_tokens=5, temperature=0)
    assert generate(FavouriteToken(0), [1], cfg, eos_id=0).token_ids == [0]
    assert generate(FavouriteToken(0), [1], GenerationConfig(max_new_tokens=5, temperature=0, stop_at_eos=False),
                    eos_id=0).token_ids == [0] * 5


def test_padding_ids_past_the_tokenizer_vocabulary_are_never_chosen():
    assert generate(FavouriteToken(7), [1], GenerationConfig(max_new_tokens=3, temperature=0),
                    vocab_size=6).token_ids == [0, 0, 0]  # the best of the rest (all tied)
    assert max(generate(FavouriteToken(7), [1], GenerationConfig(max_new_tokens=20, temperature=2.0, top_k=None,
                                                                 top_p=1.0), vocab_size=6).token_ids) < 6


@pytest.mark.parametrize("field,value", [("max_new_tokens", 0), ("temperature", -1.0), ("top_k", 0), ("top_p", 0.0),
                                         ("top_p", 1.5)])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=f"gen.{field}"):
        GenerationConfig(**{field: value})


def test_an_empty_prompt_is_refused():
    with pytest.raises(ValueError, match="at least one token"):
        generate(tiny_model("xlstm"), [], GenerationConfig())
