"""Byte-level BPE tokenizer, trained on a sample of the training split, loaded from a tokenizer.json or from the
Hugging Face hub (the GPT-2 and GPT-NeoX-20B presets) (DESIGN.md §10).

The pre-tokenizer maps every UTF-8 byte to a printable character (no prefix space) and the decoder maps
them back, and all 256 bytes are in the vocabulary, so `decode(encode(text)) == text` for any text.
`EOS_TOKEN` ends every document (GPT-2 and GPT-NeoX-20B use the same token). Literal "<|endoftext|>" inside a document is encoded as plain bytes
(`encode_special_tokens`), so only the data pipeline places end-of-document tokens. That flag is neither stored
in tokenizer.json nor kept by pickling: load tokenizers with `load_tokenizer`, not `Tokenizer.from_file`.
"""

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from xlstm_lm.data.config import TokenizerConfig
from xlstm_lm.data.sources import OfflineError, require_hub

logger = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"


def train_tokenizer(texts: Sequence[str], cfg: TokenizerConfig) -> Tokenizer:
    """Train a byte-level BPE tokenizer.

    Args:
        texts: the training documents (never the validation ones).
        cfg: uses vocab_size and min_frequency.

    Returns:
        The tokenizer; `EOS_TOKEN` has id 0.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=True,
    )
    logger.info("Training a byte-level BPE tokenizer (vocab_size=%d) on %d documents", cfg.vocab_size, len(texts))
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    tokenizer.encode_special_tokens = True
    if tokenizer.get_vocab_size() < cfg.vocab_size:
        logger.warning(
            "The tokenizer has %d tokens, not the %d of tokenizer.vocab_size: the BPE ran out of merges, as no more "
            "pairs occur at least tokenizer.min_frequency=%d times in its %d training documents (%.2f M characters). "
            "The model's vocabulary follows the tokenizer; more training text gives more tokens",
            tokenizer.get_vocab_size(), cfg.vocab_size, cfg.min_frequency, len(texts), sum(map(len, texts)) / 1e6,
        )
    return tokenizer


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer.json that has `EOS_TOKEN`.

    Args:
        path: the tokenizer.json file; "~" is expanded.

    Returns:
        The tokenizer, encoding literal special-token text as plain bytes.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"Tokenizer file {file} does not exist: set tokenizer.path to a tokenizer.json or null")
    try:
        return tokenizer_from_json(file.read_text(errors="replace"))
    except Exception as error:  # tokenizers raises a bare Exception for text it cannot parse
        raise ValueError(f"{file} is not a usable tokenizer.json: {error}") from error


def tokenizer_from_json(text: str) -> Tokenizer:
    """A tokenizer from the text of a tokenizer.json (as stored in checkpoints), checked like `load_tokenizer`."""
    tokenizer = Tokenizer.from_str(text)
    eos_id(tokenizer)
    tokenizer.encode_special_tokens = True
    return tokenizer


def pretrained_tokenizer(name: str) -> Tokenizer:
    """A tokenizer from the Hugging Face hub (e.g. "gpt2", "EleutherAI/gpt-neox-20b"), checked like `load_tokenizer`.

    Raises:
        OfflineError: the hub cannot be reached and the tokenizer is not in its local cache.
    """
    advice = (f"or download https://huggingface.co/{name}/resolve/main/tokenizer.json once and pass "
              "tokenizer.path=/path/to/tokenizer.json")
    require_hub(f"tokenizer.pretrained={name}", advice)
    try:
        tokenizer = Tokenizer.from_pretrained(name)
    except (ConnectionError, FileNotFoundError) as error:
        raise OfflineError(f"Cannot get the tokenizer {name} from the Hugging Face hub ({error}): {advice}") from None
    return tokenizer_from_json(tokenizer.to_str())


def build_tokenizer(cfg: TokenizerConfig, training_texts: Callable[[], Sequence[str]]) -> Tokenizer:
    """The tokenizer `cfg` asks for: from `cfg.path`, else from the hub (`cfg.pretrained`), else trained.

    Args:
        cfg: the tokenizer settings.
        training_texts: gives the documents to train on; called only when a tokenizer is trained.
    """
    if cfg.path is not None:
        return load_tokenizer(cfg.path)
    if cfg.pretrained is not None:
        return pretrained_tokenizer(cfg.pretrained)
    return train_tokenizer(training_texts(), cfg)


def eos_id(tokenizer: Tokenizer) -> int:
    """The id of `EOS_TOKEN`; raises ValueError if the tokenizer lacks it."""
    token_id = tokenizer.token_to_id(EOS_TOKEN)
    if token_id is None:
        raise ValueError(f"The tokenizer has no end-of-document token {EOS_TOKEN!r}")
    return token_id


def vocabulary_tokenizer(tokens: Sequence[str]) -> Tokenizer:
    """A fixed vocabulary, no BPE (the synthetic tasks): token i is `tokens[i]`, text is split at whitespace and
    decoded with spaces between tokens. `tokens` must hold `EOS_TOKEN`."""
    tokenizer = Tokenizer(models.WordLevel({token: index for index, token in enumerate(tokens)}, unk_token=EOS_TOKEN))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tokenizer_from_json(tokenizer.to_str())
