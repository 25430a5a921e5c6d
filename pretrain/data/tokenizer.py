"""The tokenizer: byte-level BPE trained with Hugging Face `tokenizers`.

Byte-level means text is first mapped to its UTF-8 bytes (each shown as one of 256 printable
characters), and BPE merges are learned on top. With all 256 bytes in the initial alphabet any
string (Arabic, Tifinagh, emoji, broken Unicode) encodes without an unknown token and decodes
back to exactly the same string.

Before BPE, a pre-tokenizer cuts text into words, and merges never cross a word boundary. Two
are available (`tokenizer.pretokenizer`):
- `generic`: GPT-2's regex. Its words are runs of one Unicode class (letters, digits, other),
  so it cuts the Arabizi word `3lach` into `3` + `lach` and `m9wd` into `m` + `9` + `wd`, and
  cuts words at every combining mark, which is not a letter: Arabic at each haraka (`اعتُمد` ->
  `اعت` + `ُ` + `مد`), Tifinagh at the consonant joiner U+2D7F, Latin text not in NFC at its
  accents, and it cuts a hyphen off both neighbours (`ghur-s` -> `ghur` + `-` + `s`).
  Tifinagh letters (Lo) and the labialization mark U+2D6F (Lm) are letters to it, so
  normalized Tifinagh comes out the same with both pre-tokenizers. It is kept as the baseline
  of `pretrain tokenizer report`.
- `siyada`: the same idea with rules for our languages, see `SIYADA_PATTERN`.

The 32 special tokens come first, so their ids are fixed for every tokenizer we train: PAD=0,
BOS=1, EOS=2, DOC=3 (document separator), then reserved slots 4-31 for fine-tuning (chat roles
and the like) so that adding them later changes no id. The packed shards, the loss masking and
the model export rely on these ids; never reorder them. Special-token strings that occur inside
document text are encoded as ordinary text (`encode_special_tokens`), so a web page containing
"<|eos|>" cannot inject one.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from pretrain.config import Config
from pretrain.data import DataError
from pretrain.data.corpus import Document, read_documents, resolve_corpus
from pretrain.data.normalize import normalize_text
from pretrain.fileio import atomic_write_text

PAD, BOS, EOS, DOC = "<|pad|>", "<|bos|>", "<|eos|>", "<|doc|>"
PAD_ID, BOS_ID, EOS_ID, DOC_ID = 0, 1, 2, 3
NUM_SPECIAL_TOKENS = 32
RESERVED = [f"<|reserved_{i}|>" for i in range(NUM_SPECIAL_TOKENS - 4)]  # ids 4-31
SPECIAL_TOKENS = {token: i for i, token in enumerate([PAD, BOS, EOS, DOC, *RESERVED])}
MIN_VOCAB_SIZE = NUM_SPECIAL_TOKENS + 256  # specials + one token per byte
UNLABELLED = "und"  # language of texts given without one (ISO 639 "undetermined")

# The siyada pre-tokenizer: the alternatives are tried in order at each position; the first that
# matches is one word. A leading space belongs to the word after it, as in GPT-2.
SIYADA_PATTERN = "|".join([
    # French elision: the article or pronoun keeps its apostrophe (" l'" + "école", " qu'" +
    # "il"), so the word after it is spelled the same after "l'", "d'" or "qu'". Both
    # apostrophe forms (' and ’).
    r" ?(?i:[cdjlmnst]|qu|jusqu|lorsqu|puisqu)['’](?=\p{L})",
    # English contractions, as GPT-2 and Llama 3: "don" + "'t", "Morocco" + "'s".
    r"(?i:['’](?:s|t|re|ve|m|ll|d))(?!\p{L})",
    # Latin words, where digits inside a word are letters (Arabizi: 3lach, m9wd, l7bel, 2ana;
    # also 2ème, 15km, 1990s), with combining marks (text not in NFC: h + U+0323 for ḥ).
    # At most 4 leading digits: an unbounded run would be rescanned at every position of a
    # long number (quadratic time); "12345km" becomes "123" + "45km".
    # A hyphen right after a letter joins the word after it, as a leading space does: Tamazight
    # in Latin script hyphenates its clitics (ghur-s "to him", ad-tili, yekka-dd), French its
    # inverted pronouns (dit-il), so "-s" and "-il" can be one token instead of two.
    r"(?:(?<=[\p{L}\p{M}])-| ?)[0-9]{0,4}\p{Latin}[\p{Latin}\p{M}0-9]*",
    # Words of any other script with their marks: Arabic with harakat (U+064B-U+065F, Mn) and
    # the Moroccan letters ڭ گ ݣ ڤ (Lo), Tifinagh with the labialization mark U+2D6F (Lm) and
    # the consonant joiner U+2D7F (Mn).
    r" ?\p{L}[\p{L}\p{M}]*",
    # Numbers in groups of at most three digits, as Llama 3: no vocabulary goes to single
    # numbers such as "1948", and every number is spelled with the same few pieces.
    r" ?\p{N}{1,3}",
    # Punctuation and symbols, then whitespace, exactly as GPT-2.
    r" ?[^\s\p{L}\p{N}]+",
    r"\s+(?!\S)",
    r"\s+",
])


def make_pre_tokenizer(kind: str) -> pre_tokenizers.PreTokenizer:
    """The `siyada` or `generic` pre-tokenizer (words, then bytes as printable characters)."""
    if kind == "generic":
        return pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's regex built in
    if kind == "siyada":
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(SIYADA_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    raise DataError(f"unknown pre-tokenizer {kind!r}; use 'siyada' or 'generic'")


def language_shares(bytes_per_language: dict[str, int], temperature: float) -> dict[str, float]:
    """Share of each language in the training sample: proportional to bytes^(1/temperature).

    T=1 keeps the corpus proportions; larger T moves towards uniform, so a small language
    (Tamazight) gets enough merges to be tokenized well rather than spelled in bytes.
    """
    weights = {lang: size ** (1 / temperature) for lang, size in bytes_per_language.items()}
    total = sum(weights.values())
    return {lang: weight / total for lang, weight in sorted(weights.items())}


def language_quotas(sizes: dict[str, int], shares: dict[str, float], budget: int,
                    max_repeats: float) -> dict[str, int]:
    """Bytes of each language in a sample of `budget` bytes: its share, but never more than
    `max_repeats` times its text (0: no cap); what a capped language cannot use goes to the
    others in proportion to their shares, until all fit (UniMax, Chung et al. 2023)."""
    quotas: dict[str, float] = {}
    open_ = dict(shares)
    left = float(budget)
    while open_:
        weight = sum(open_.values())
        capped = {lang for lang, share in open_.items() if max_repeats
                  and left * share / weight > max_repeats * sizes[lang]}
        if not capped:
            quotas.update({lang: left * share / weight for lang, share in open_.items()})
            break
        for lang in capped:
            quotas[lang] = max_repeats * sizes[lang]
            left -= quotas[lang]
            del open_[lang]
    return {lang: round(quota) for lang, quota in sorted(quotas.items())}


def sample_for_tokenizer(documents: Iterable[Document], language_temperature: float = 3.0,
                         sample_bytes: int | None = None, seed: int = 0,
                         max_repeats: float = 0.0) -> list[Document]:
    """A language-balanced sample of `documents` to train the tokenizer on.

    The sample holds min(sample_bytes, corpus bytes) bytes in all (everything when
    `sample_bytes` is None or 0), split across languages by `language_shares`, each language
    repeated at most `max_repeats` times (`language_quotas`). Each language's documents are
    drawn in a seeded shuffled order until its quota is met. A language whose quota exceeds its
    data is repeated: BPE only counts how often each word occurs, so repeating a language is
    the same as giving its words more weight, which is what up-sampling means here. The cap
    keeps a language of a few kilobytes from taking, at a high temperature, the merges of a
    large one while giving itself only repetitions of the same words.
    """
    by_language: dict[str, list[tuple[Document, int]]] = defaultdict(list)
    for document in documents:
        by_language[document.lang].append((document, len(document.text.encode("utf-8"))))
    sizes = {lang: sum(size for _, size in docs) for lang, docs in by_language.items()}
    sizes = {lang: size for lang, size in sizes.items() if size}
    if not sizes:
        raise DataError("no text to train the tokenizer on; check data.corpus")
    total = sum(sizes.values())
    budget = min(sample_bytes, total) if sample_bytes else total
    sample = []
    quotas = language_quotas(sizes, language_shares(sizes, language_temperature), budget,
                             max_repeats)
    for lang, quota in quotas.items():
        docs = by_language[lang]
        order = list(range(len(docs)))
        random.Random(f"{seed}/{lang}").shuffle(order)  # str seeds hash stably across runs
        taken, position = 0, 0
        while taken < quota:
            document, size = docs[order[position % len(order)]]
            sample.append(document)
            taken += size
            position += 1
    return sample


def train_tokenizer(documents: Iterable[Document | str], vocab_size: int,
                    pretokenizer: str = "siyada", language_temperature: float = 3.0,
                    sample_bytes: int | None = None, seed: int = 0,
                    max_repeats: float = 0.0) -> Tokenizer:
    """Learn a byte-level BPE vocabulary of at most `vocab_size` tokens.

    Trained on `sample_for_tokenizer(documents, ...)`; plain strings count as one language
    (`UNLABELLED`). A small corpus can run out of merges before reaching `vocab_size`; the
    result is then smaller (read `get_vocab_size()`). Deterministic for a given input and seed.
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise DataError(f"vocab_size {vocab_size} is too small: a byte-level tokenizer needs at "
                        f"least {MIN_VOCAB_SIZE} ({NUM_SPECIAL_TOKENS} special tokens + 256 "
                        "bytes)")
    labelled = [item if isinstance(item, Document) else Document(item, UNLABELLED, "")
                for item in documents]
    sample = sample_for_tokenizer(labelled, language_temperature, sample_bytes, seed,
                                  max_repeats)
    tokenizer = Tokenizer(models.BPE())  # no unk_token: every byte is in the alphabet
    tokenizer.pre_tokenizer = make_pre_tokenizer(pretokenizer)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator((document.text for document in sample), trainer)
    return _checked(tokenizer, "trained tokenizer")


def config_documents(config: Config) -> list[Document]:
    """The documents of `data.corpus`, normalized as prepare does when `data.normalize` is on."""
    documents = read_documents(resolve_corpus(config.data.corpus), config.data)
    if config.data.normalize:
        documents = (Document(normalize_text(d.text), d.lang, d.source) for d in documents)
    return [document for document in documents if document.text]


def train_for_config(config: Config, documents: Sequence[Document],
                     pretokenizer: str | None = None) -> Tokenizer:
    """`train_tokenizer` with `model.vocab_size`, the `tokenizer.*` settings and `train.seed`."""
    settings = config.tokenizer
    return train_tokenizer(documents, config.model.vocab_size,
                           pretokenizer or settings.pretokenizer, settings.language_temperature,
                           settings.sample_bytes, config.train.seed, settings.max_repeats)


def save_tokenizer(tokenizer: Tokenizer, path: str | Path) -> None:
    """Write `tokenizer.json` atomically (readers never see half a file).

    `transformers.PreTrainedTokenizerFast(tokenizer_file=path, bos_token="<|bos|>",
    eos_token="<|eos|>", pad_token="<|pad|>")` loads it as is.
    """
    atomic_write_text(path, tokenizer.to_str(pretty=True))


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer.json written by `save_tokenizer`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"tokenizer file not found: {path}; run `pretrain tokenizer train` or "
                        "`pretrain prepare` to create it")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises a bare Exception on bad JSON
        raise DataError(f"{path}: not a valid tokenizer file ({error}); re-run "
                        "`pretrain tokenizer train`") from None
    return _checked(tokenizer, str(path))


def _checked(tokenizer: Tokenizer, name: str) -> Tokenizer:
    """Check the fixed special-token ids and switch on literal encoding of their strings."""
    for token, expected in SPECIAL_TOKENS.items():
        found = tokenizer.token_to_id(token)
        if found != expected:
            raise DataError(f"{name}: special token {token} has id {found}, expected {expected}; "
                            "use a tokenizer trained by this project (`pretrain tokenizer train`)")
    # Not stored in tokenizer.json, so set on every load.
    tokenizer.encode_special_tokens = True
    return tokenizer


def encode_documents(tokenizer: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text as [BOS] + text + [EOS] (batched: tokenizers runs it in parallel)."""
    encodings = tokenizer.encode_batch(list(texts), add_special_tokens=False)
    return [[BOS_ID, *encoding.ids, EOS_ID] for encoding in encodings]


def encode_document(tokenizer: Tokenizer, text: str) -> list[int]:
    """Token ids of one document: [BOS] + text + [EOS]."""
    return encode_documents(tokenizer, [text])[0]
