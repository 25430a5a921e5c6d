"""The tokenizer: byte-level BPE trained with Hugging Face `tokenizers`.

Byte-level means text is first mapped to its UTF-8 bytes (each shown as one of 256 printable
characters), and BPE merges are learned on top. With all 256 bytes in the initial alphabet any
string (Arabic, Tifinagh, emoji, broken Unicode) encodes without an unknown token and decodes
back to exactly the same string.

The three special tokens come first, so their ids are fixed for every tokenizer we train:
PAD=0, BOS=1, EOS=2. The packed shards, the loss masking and the model export rely on these
ids; never reorder them. Special-token strings that occur inside document text are encoded as
ordinary text (`encode_special_tokens`), so a web page containing "<|eos|>" cannot inject one.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from pretrain.data import DataError

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
SPECIAL_TOKENS = {PAD: PAD_ID, BOS: BOS_ID, EOS: EOS_ID}
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + 256  # specials + one token per byte


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Learn a byte-level BPE vocabulary of at most `vocab_size` tokens from `texts`.

    A small corpus can run out of merges before reaching `vocab_size`; the result is then
    smaller (read `get_vocab_size()`).
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise DataError(f"vocab_size {vocab_size} is too small: a byte-level tokenizer needs at "
                        f"least {MIN_VOCAB_SIZE} (3 special tokens + 256 bytes)")
    tokenizer = Tokenizer(models.BPE())  # no unk_token: every byte is in the alphabet
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    return _checked(tokenizer, "trained tokenizer")


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer.json written by `train_tokenizer` (then `Tokenizer.save`)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"tokenizer file not found: {path}; run `pretrain prepare` to create it")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises a bare Exception on bad JSON
        raise DataError(f"{path}: not a valid tokenizer file ({error}); re-run "
                        "`pretrain prepare`") from None
    return _checked(tokenizer, str(path))


def _checked(tokenizer: Tokenizer, name: str) -> Tokenizer:
    """Check the fixed special-token ids and switch on literal encoding of their strings."""
    for token, expected in SPECIAL_TOKENS.items():
        found = tokenizer.token_to_id(token)
        if found != expected:
            raise DataError(f"{name}: special token {token} has id {found}, expected {expected}; "
                            "use a tokenizer trained by this project")
    # Not stored in tokenizer.json, so set on every load.
    tokenizer.encode_special_tokens = True
    return tokenizer


def encode_documents(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text as [BOS] + text + [EOS] (batched: tokenizers runs it in parallel)."""
    encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
    return [[BOS_ID, *encoding.ids, EOS_ID] for encoding in encodings]


def encode_document(tokenizer: Tokenizer, text: str) -> list[int]:
    """Token ids of one document: [BOS] + text + [EOS]."""
    return encode_documents(tokenizer, [text])[0]
