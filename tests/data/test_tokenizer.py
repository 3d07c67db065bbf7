"""Byte-level BPE tokenizer: lossless round trip, end-of-document handling, loading (DESIGN.md §10)."""

import random
import socket
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models

from tests.data.tiny_corpus import VOCAB_SIZE
from xlstm_lm.data import (EOS_TOKEN, OfflineError, TokenizerConfig, build_tokenizer, eos_id, list_corpus, load,
                           load_tokenizer, locate, train_tokenizer)


@pytest.fixture(scope="module")
def cached_tokenizer(prepared_configs: tuple) -> Tokenizer:
    """The tokenizer as saved in the shared cache and loaded back."""
    return load(locate(*prepared_configs)).tokenizer


def random_text(rng: random.Random) -> str:
    """Text drawn from ASCII, control characters, whitespace, accents, CJK, emoji and any other code point."""
    pools = ["abc xyz 012 ()_:", "\t\n\r \x00\x0b\x0c\u2028\u00a0", "éèñüßøåçÅ\u0301", "漢字かなカナ한국어", "🙂🚀👍🏽"]
    characters = []
    for _ in range(rng.randint(0, 80)):
        if rng.random() < 0.2:
            code_point = rng.choice([rng.randint(0x80, 0xD7FF), rng.randint(0xE000, 0x10FFFF)])
            characters.append(chr(code_point))
        else:
            characters.append(rng.choice(rng.choice(pools)))
    return "".join(characters)


def test_round_trip_on_random_text(cached_tokenizer: Tokenizer) -> None:
    rng = random.Random(7)
    texts = [random_text(rng) for _ in range(300)] + ["", " ", "\n\n\t  \r\n", "  leading", "trailing  "]
    for text in texts:
        assert cached_tokenizer.decode(cached_tokenizer.encode(text).ids) == text, repr(text)


def test_round_trip_on_corpus_files(cached_tokenizer: Tokenizer, prepared_configs: tuple) -> None:
    corpus = list_corpus(prepared_configs[0])
    for document in corpus.train + corpus.val:
        assert cached_tokenizer.decode(cached_tokenizer.encode(document.text).ids) == document.text, document.path


def test_literal_end_of_document_text_is_plain_bytes(cached_tokenizer: Tokenizer) -> None:
    text = f"before {EOS_TOKEN} after"
    ids = cached_tokenizer.encode(text).ids
    assert eos_id(cached_tokenizer) not in ids
    assert cached_tokenizer.decode(ids) == text


def test_trained_vocabulary(cached_tokenizer: Tokenizer) -> None:
    assert eos_id(cached_tokenizer) == 0
    assert 256 + 1 < cached_tokenizer.get_vocab_size() <= VOCAB_SIZE
    assert len(cached_tokenizer.encode("def return self").ids) < len("def return self")  # merges were learned


def test_training_is_deterministic(prepared_configs: tuple) -> None:
    texts = [document.text for document in list_corpus(prepared_configs[0]).train]
    first = train_tokenizer(texts, TokenizerConfig(vocab_size=300))
    second = train_tokenizer(texts, TokenizerConfig(vocab_size=300))
    assert first.get_vocab_size() == 300
    assert first.to_str() == second.to_str()


def test_load_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        load_tokenizer(tmp_path / "nothing.json")


def test_load_rejects_tokenizer_without_end_of_document(tmp_path: Path) -> None:
    file = tmp_path / "tokenizer.json"
    Tokenizer(models.BPE()).save(str(file))
    with pytest.raises(ValueError, match="end-of-document"):
        load_tokenizer(file)


def test_build_reads_training_texts_only_when_it_trains(cached_tokenizer: Tokenizer, tmp_path: Path) -> None:
    file = tmp_path / "tokenizer.json"
    cached_tokenizer.save(str(file))

    def no_texts():
        raise AssertionError("a ready tokenizer needs no training texts")

    assert build_tokenizer(TokenizerConfig(path=str(file)), no_texts).to_str() == cached_tokenizer.to_str()
    trained = build_tokenizer(TokenizerConfig(vocab_size=300), lambda: ["abc abc abd"] * 10)
    assert eos_id(trained) == 0


def test_a_smaller_vocabulary_than_asked_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    tokenizer = train_tokenizer(["abc abc abd"] * 10, TokenizerConfig(vocab_size=8192))
    size = tokenizer.get_vocab_size()
    assert size < 300
    assert (f"The tokenizer has {size} tokens, not the 8192 of tokenizer.vocab_size: the BPE ran out of merges, as no "
            "more pairs occur at least tokenizer.min_frequency=2 times in its 10 training documents") in caplog.text


def test_pretrained_without_network_fails_at_once_naming_tokenizer_path(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)

    def refuse_connection(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(socket, "create_connection", refuse_connection)
    with pytest.raises(OfflineError, match=r"tokenizer.pretrained=gpt2 needs the network.*tokenizer.path="):
        build_tokenizer(TokenizerConfig(pretrained="gpt2"), list)


def test_load_rejects_a_file_that_is_not_a_tokenizer_naming_it(tmp_path: Path) -> None:
    file = tmp_path / "notes.json"
    file.write_text("{not json")
    with pytest.raises(ValueError, match="notes.json is not a usable tokenizer.json"):
        load_tokenizer(file)
