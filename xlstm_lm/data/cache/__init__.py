"""Preparation of sources into token shards, cached by fingerprint (DESIGN.md §10).

`prepare` opens the sources, trains (or loads) the tokenizer on a sample of the training split, tokenizes
every document in `data.num_proc` processes, appends the end-of-document token and writes each split as
fixed-size shards with a document index (`shards.ShardWriter`). The cache folder holds

    manifest.json  tokenizer.json  train/shard-00000.bin ... train/documents.npy  val/...

One module per step:

    key.py               the folder's name: a fingerprint of everything that decides the shards
    split.py             the check that every source gives both splits documents, before any tokenizing
    tokenizer_sample.py  the documents the tokenizer is trained on
    tokenizing.py        tokenizing a source into split shards, in a pool of processes
    mixture.py           the weights of a mixture and the subsampling that meets them
    prepared.py          the manifest and the on-disk format: load and verify a finished folder
    build.py             `locate` and `prepare`: the steps above, written atomically

Everything is written to a temporary folder that is renamed into place when complete, so an interrupted
preparation leaves no cache behind and a finished cache is never overwritten; when two processes race, the
first rename wins and the other discards its copy. (A killed process may leave a `.tmp-*` folder next to the
caches; it is never read and can be deleted.)

Under DDP only one process per node should call `prepare` (LightningDataModule.prepare_data does this);
every rank then calls `locate` and `load`, which build nothing.
"""

from xlstm_lm.data.cache.build import locate, prepare
from xlstm_lm.data.cache.prepared import PreparedData, describe, load, token_dtype, verify

__all__ = ["PreparedData", "describe", "load", "locate", "prepare", "token_dtype", "verify"]
