"""The shard format: documents written in pieces read back as one token stream, damage detected."""

import pickle

import numpy as np
import pytest

from xlstm_lm.data.shards import ShardedTokens, ShardWriter, document_ends, verify


def write_documents(folder, documents, shard_tokens, dtype=np.uint16):
    writer = ShardWriter(folder, "train", dtype, shard_tokens)
    writer.add(documents[0])
    writer.add_many(np.concatenate(documents[1:]), [len(document) for document in documents[1:]])
    return writer.close()


@pytest.fixture
def documents():
    rng = np.random.default_rng(0)
    return [rng.integers(1, 1000, size=length).astype(np.int64) for length in (5, 1, 17, 9, 30)]


@pytest.mark.parametrize("shard_tokens", [1, 7, 16, 62, 1000])
def test_round_trip_across_shard_boundaries(tmp_path, documents, shard_tokens):
    entry = write_documents(tmp_path, documents, shard_tokens)
    stream = np.concatenate(documents)
    assert entry["tokens"] == len(stream) == 62 and entry["documents"] == 5
    assert [shard["tokens"] for shard in entry["shards"]][:-1] == [shard_tokens] * (len(entry["shards"]) - 1)
    assert len(entry["shards"]) == -(-62 // shard_tokens)
    tokens = ShardedTokens.open(tmp_path, entry, np.uint16)
    np.testing.assert_array_equal(tokens.read(0, 62), stream)
    rng = np.random.default_rng(1)
    for start in rng.integers(0, 62, size=20):
        stop = int(rng.integers(start, 63))
        np.testing.assert_array_equal(tokens.read(int(start), stop), stream[start:stop])
    np.testing.assert_array_equal(document_ends(tmp_path, "train"), np.cumsum([5, 1, 17, 9, 30]))
    verify(tmp_path, entry, np.uint16)


def test_pickled_reader_reopens_its_maps(tmp_path, documents):
    entry = write_documents(tmp_path, documents, 8)
    tokens = ShardedTokens.open(tmp_path, entry, np.uint16)
    tokens.read(0, 20)
    copy = pickle.loads(pickle.dumps(tokens))
    np.testing.assert_array_equal(copy.read(3, 40), tokens.read(3, 40))


def test_read_outside_the_split_is_an_error(tmp_path, documents):
    tokens = ShardedTokens.open(tmp_path, write_documents(tmp_path, documents, 8), np.uint16)
    with pytest.raises(IndexError, match="outside"):
        tokens.read(60, 63)


def test_truncated_shard_is_named(tmp_path, documents):
    entry = write_documents(tmp_path, documents, 16)
    shard = tmp_path / entry["shards"][1]["file"]
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(ValueError, match="shard-00001.bin.*damaged"):
        ShardedTokens.open(tmp_path, entry, np.uint16)


def test_corrupted_shard_fails_verification(tmp_path, documents):
    entry = write_documents(tmp_path, documents, 16)
    shard = tmp_path / entry["shards"][0]["file"]
    data = bytearray(shard.read_bytes())
    data[3] ^= 0xFF
    shard.write_bytes(bytes(data))
    ShardedTokens.open(tmp_path, entry, np.uint16)  # same size: only the hash can tell
    with pytest.raises(ValueError, match="shard-00000.bin.*SHA-256"):
        verify(tmp_path, entry, np.uint16)


def test_lengths_must_cover_the_ids(tmp_path):
    writer = ShardWriter(tmp_path, "val", np.uint32, 4)
    with pytest.raises(ValueError, match="sum to 3"):
        writer.add_many(np.arange(5), [1, 2])
    with pytest.raises(ValueError, match="at least one token"):
        writer.add_many(np.arange(2), [2, 0])
