"""The lm-evaluation-harness model type: its scores equal our model's, offline, on tasks from local files."""

import json
import re
import shutil

import pytest
import torch

from tests.evaluation.tiny_export import corpus_texts, tiny_export, tiny_model  # noqa: F401 (a fixture)
from tests.test_dependency_direction import PACKAGE
from xlstm_lm.evaluation.generation import GenerationConfig, generate
from xlstm_lm.models.io import save_pretrained

lm_eval = pytest.importorskip("lm_eval")  # the dev extra installs it
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from xlstm_lm.cli.lm_eval_model import XLSTMHarnessLM  # noqa: E402

PAIRS = [("def main(", "):\n    return 0"), ("", "import os"), ("x = ", "1"), ("class A:\n", "    pass"),
         ("for i in range(", "10):")]


@pytest.fixture(scope="module")
def exports(tiny_export, tmp_path_factory):
    """An export folder of each tiny model kind, all with the tiny export's tokenizer."""
    folders = {"xlstm": tiny_export}
    for kind in ("lstm", "llama"):
        folder = tmp_path_factory.mktemp(kind)
        save_pretrained(tiny_model(kind), folder)
        shutil.copy(tiny_export / "tokenizer.json", folder / "tokenizer.json")
        folders[kind] = folder
    return folders


def harness_model(folder, **kwargs) -> XLSTMHarnessLM:
    return XLSTMHarnessLM(str(folder), device="cpu", **kwargs)


def requests(kind: str, arguments: list[tuple]) -> list[Instance]:
    return [Instance(kind, {}, args, index) for index, args in enumerate(arguments)]


def log_probs(model, ids: list[int]) -> torch.Tensor:
    """Log-probability of each token of `ids` after the first, from one pass of the model: (len(ids) - 1,)."""
    with torch.no_grad():
        logits = model(torch.tensor([ids[:-1]]))[0].double()  # (S, V)
    return logits.log_softmax(-1).gather(-1, torch.tensor(ids[1:]).unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("kind", ["xlstm", "lstm", "llama"])
def test_loglikelihood_is_the_log_probability_of_the_continuation(exports, kind):
    lm = harness_model(exports[kind], dtype="float64", batch_size=2)
    results = lm.loglikelihood(requests("loglikelihood", PAIRS), disable_tqdm=True)
    for (context, continuation), (logprob, greedy) in zip(PAIRS, results):
        eos = lm.eot_token_id
        context_ids = [eos, *lm.tokenizer.encode(context.rstrip()).ids]  # lm_eval moves trailing space on
        ids = [eos, *lm.tokenizer.encode(context + continuation).ids]
        expected = log_probs(lm.model, ids)[len(context_ids) - 1:]
        assert logprob == pytest.approx(float(expected.sum()), rel=1e-6)
        assert not greedy  # an untrained model: its argmax is not the text


def test_greedy_is_the_argmax_over_the_tokenizer_ids(exports):
    lm = harness_model(exports["xlstm"])
    eos = lm.eot_token_id
    with torch.no_grad():
        logits = lm.model(torch.tensor([[eos, *lm.tokenizer.encode("def").ids]]))[0, -1]
    best = int(logits[:lm.vocab_size].argmax())
    continuation = lm.tokenizer.decode([best])
    assert lm.tokenizer.encode("def" + continuation).ids[-1] == best
    forward = lm.model.forward

    def favour_padding(*args, **kwargs):  # the padding id past the tokenizer's would win an argmax over all ids
        output = forward(*args, **kwargs)
        (output[0] if isinstance(output, tuple) else output)[..., lm.vocab_size] = 1e4
        return output

    lm.model.forward = favour_padding
    [(_, greedy)] = lm.loglikelihood(requests("loglikelihood", [("def", continuation)]), disable_tqdm=True)
    assert greedy


@pytest.mark.parametrize("kind", ["xlstm", "llama"])
def test_batched_requests_score_like_single_ones(exports, kind):
    single = harness_model(exports[kind], dtype="float64", batch_size=1)
    batched = harness_model(exports[kind], dtype="float64", batch_size=4)
    one = single.loglikelihood(requests("loglikelihood", PAIRS), disable_tqdm=True)
    many = batched.loglikelihood(requests("loglikelihood", PAIRS), disable_tqdm=True)
    assert [greedy for _, greedy in many] == [greedy for _, greedy in one]
    assert [logprob for logprob, _ in many] == pytest.approx([logprob for logprob, _ in one], rel=1e-6)


@pytest.mark.parametrize("kind", ["xlstm", "lstm"])
def test_rolling_carries_the_state_across_windows_like_one_pass(exports, kind):
    text = corpus_texts()[1][:300]
    lm = harness_model(exports[kind], dtype="float64", batch_size=2, max_length=16)
    ids = [lm.eot_token_id, *lm.tokenizer.encode(text).ids]
    assert len(ids) > 4 * 16  # several windows
    results = lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(text,), (text[:40],), ("",)]),
                                       disable_tqdm=True)
    expected = [float(log_probs(lm.model, ids).sum()),
                float(log_probs(lm.model, [lm.eot_token_id, *lm.tokenizer.encode(text[:40]).ids]).sum()), 0.0]
    assert results == pytest.approx(expected, rel=1e-6)


def test_transformer_rolls_windows_of_its_context(exports):
    text = corpus_texts()[1][:300]
    lm = harness_model(exports["llama"], dtype="float64", max_length=16)
    tokens = lm.tokenizer.encode(text).ids
    # lm_eval's windows: each token scored once; the first window from EOS, each later one after the 16 tokens
    # before its end
    expected = float(log_probs(lm.model, [lm.eot_token_id, *tokens[:16]]).sum())
    for predicted in range(16, len(tokens), 16):
        end = min(predicted + 16, len(tokens))
        expected += float(log_probs(lm.model, tokens[end - 17:end])[predicted - end:].sum())
    [result] = lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(text,)]), disable_tqdm=True)
    assert result == pytest.approx(expected, rel=1e-6)
    whole = harness_model(exports["llama"], dtype="float64", max_length=4096)
    [one_pass] = whole.loglikelihood_rolling(requests("loglikelihood_rolling", [(text,)]), disable_tqdm=True)
    assert one_pass == pytest.approx(float(log_probs(whole.model, [lm.eot_token_id, *tokens]).sum()), rel=1e-6)


@pytest.mark.parametrize("kind", ["xlstm", "llama"])
def test_generate_until_is_our_greedy_generation_cut_at_the_stop_string(exports, kind):
    lm = harness_model(exports[kind])
    prompt = [lm.eot_token_id, *lm.tokenizer.encode("def main(").ids]
    greedy = generate(lm.model, prompt, GenerationConfig(max_new_tokens=30, temperature=0, stop_at_eos=False),
                      vocab_size=lm.vocab_size)
    full_text = lm.tokenizer.decode(greedy.token_ids)
    # a stop string the generation reaches after a few tokens: a plain word (an untrained model writes bytes)
    stop = next(piece for piece in map(lm.tokenizer.decode, ([token] for token in greedy.token_ids[5:]))
                if piece.strip().isalpha() and piece.isascii() and full_text.index(piece) > 0)
    steps = []
    decode_step = lm.model.decode_step
    lm.model.decode_step = lambda *args: steps.append(1) or decode_step(*args)
    texts = lm.generate_until(requests("generate_until", [("def main(", {"until": [stop], "max_gen_toks": 30}),
                                                          ("def main(", {"until": ["never"], "max_gen_toks": 30})]),
                              disable_tqdm=True)
    assert texts == [full_text[:full_text.index(stop)], full_text]
    assert len(steps) < 12 + 29  # the first request stopped once the stop string was generated


def test_generate_until_batches_requests_and_returns_what_each_gets_alone(exports):
    contexts = ["def main(", "import", "class A:\n    def __init__(self", "x", "for i in range(10):\n"]
    arguments = [(context, {"until": ["\n\n"], "max_gen_toks": 6}) for context in contexts]
    arguments += [(context, {"until": ["never"], "max_gen_toks": 4}) for context in contexts[:2]]
    alone = harness_model(exports["xlstm"], dtype="float64").generate_until(requests("generate_until", arguments),
                                                                          disable_tqdm=True)
    lm = harness_model(exports["xlstm"], dtype="float64", batch_size=3)
    rows = []
    decode_step = lm.model.decode_step
    lm.model.decode_step = lambda ids, state: rows.append(ids.shape[0]) or decode_step(ids, state)
    assert lm.generate_until(requests("generate_until", arguments), disable_tqdm=True) == alone
    assert max(rows) == 3  # one decode step served three requests


def test_tasks_from_local_files_run_through_simple_evaluate(exports, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"context": context, "answer": answer, "choices": [answer, "zz"]}) + "\n"
                            for context, answer in PAIRS[2:]))
    common = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
    (tmp_path / "tiny_choice.yaml").write_text(
        "task: tiny_choice\n" + common + "output_type: multiple_choice\ndoc_to_text: '{{context}}'\n"
        "doc_to_target: 0\ndoc_to_choice: '{{choices}}'\nmetric_list:\n  - metric: acc\n")
    (tmp_path / "tiny_rolling.yaml").write_text(
        "task: tiny_rolling\n" + common + "output_type: loglikelihood_rolling\ndoc_to_text: ''\n"
        "doc_to_target: '{{context}}{{answer}}'\nmetric_list:\n  - metric: word_perplexity\n"
        "  - metric: bits_per_byte\n")
    (tmp_path / "tiny_generate.yaml").write_text(
        "task: tiny_generate\n" + common + "output_type: generate_until\ndoc_to_text: '{{context}}'\n"
        "doc_to_target: '{{answer}}'\ngeneration_kwargs:\n  until: ['\\n']\n  max_gen_toks: 5\n"
        "metric_list:\n  - metric: exact_match\n")
    out = lm_eval.simple_evaluate(model="xlstm_lm", model_args=f"pretrained={exports['lstm']},max_length=8",
                                  tasks=["tiny_choice", "tiny_rolling", "tiny_generate"], device="cpu", batch_size=2,
                                  task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False), log_samples=True)
    lm = harness_model(exports["lstm"])
    choice = out["samples"]["tiny_choice"]
    expected = lm.loglikelihood(requests("loglikelihood", [(context, " " + option) for context, answer in PAIRS[2:]
                                                           for option in (answer, "zz")]), disable_tqdm=True)
    scored = [resp[0] for sample in choice for resp in sample["resps"]]
    assert [logprob for logprob, _ in scored] == pytest.approx([logprob for logprob, _ in expected], rel=1e-5)
    assert 0 <= out["results"]["tiny_choice"]["acc,none"] <= 1
    assert out["results"]["tiny_rolling"]["word_perplexity,none"] > 1
    assert [sample["resps"][0][0] for sample in out["samples"]["tiny_generate"]] == lm.generate_until(
        requests("generate_until", [(context, {"until": ["\n"], "max_gen_toks": 5}) for context, _ in PAIRS[2:]]),
        disable_tqdm=True)


def test_lm_eval_is_imported_only_by_the_adapter_and_its_command():
    # lm_eval comes with the dev extra: the rest of the package works without it
    users = [path.relative_to(PACKAGE).as_posix() for path in sorted(PACKAGE.rglob("*.py"))
             if re.search(r"^\s*(from|import) lm_eval\b", path.read_text(), re.MULTILINE)]
    assert users == ["cli/harness.py", "cli/lm_eval_model.py"]
