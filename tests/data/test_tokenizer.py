"""The tokenizer: siyada pre-tokenizer, special tokens, language-balanced training, Hugging Face
compatibility, the report against a generic baseline, and the `pretrain tokenizer` commands."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, trainers
from transformers import PreTrainedTokenizerFast

from pretrain.cli import main
from pretrain.config import load_config
from pretrain.data import DataError
from pretrain.data.corpus import Document
from pretrain.data.tokenizer import (
    BOS,
    BOS_ID,
    DOC,
    DOC_ID,
    EOS,
    EOS_ID,
    MIN_VOCAB_SIZE,
    PAD,
    PAD_ID,
    RESERVED,
    SPECIAL_TOKENS,
    config_documents,
    encode_document,
    language_quotas,
    language_shares,
    load_tokenizer,
    make_pre_tokenizer,
    sample_for_tokenizer,
    save_tokenizer,
    train_tokenizer,
)
from pretrain.data.tokenizer_report import (
    DEFAULT_REAL_TEXT,
    real_text_eval_sets,
    tokenizer_report,
)
from tests.paths import REPO

ROOT = REPO

# Words per language; fixture documents are random sentences of them.
WORDS = {
    "arb_Arab": "المغرب بلد جميل في شمال أفريقيا واللغة العربية لغة رسمية اعتُمد لمّا".split(),
    "ary_Arab": "واش نتا لاباس بزاف ديال الناس كيهضرو الدارجة ڭاع ݣالس ڤيديو".split(),
    "ary_Latn": "wach nta labas 3afak 7ta ghda bzzaf dyal nas 3lach m9wd l7bel sa7bi".split(),
    "fra_Latn": "le Maroc est un pays où l'été très chaud ça coûte cher à Fès".split(),
    "zgh_Tfng": "ⴰⵣⵓⵍ ⴼⵍⵍⴰⵡⵏ ⵜⴰⵎⴰⵣⵉⵖⵜ ⵜⵓⵜⵍⴰⵢⵜ ⵏ ⵍⵎⵖⵔⵉⴱ ⴰⴽⵯⴰⵔ ⴰⴳⵯⵎⴰⵔ".split(),
    "eng_Latn": "the kingdom of Morocco trains its own language model 🇲🇦 👍🏽".split(),
}
ROUND_TRIP = [
    "المملكة المغربية، ٢٠٢٤. اعتُمد لمّا",  # Arabic with Arabic-Indic digits and harakat
    "wach nta mzyan? 3afak 9ra had l-ktab, 7ta l ghda! 2ana m9wd",  # Darija Arabizi
    "ڭاع الناس كيهضرو ݣالس ڤيديو",  # Darija in Arabic script, Moroccan letters
    "Où est l'école ? Ça coûte 12,50 € — d’un côté, déjà payé.",  # French
    "ⴰⵣⵓⵍ ⴼⵍⵍⴰⵡⵏ, ⵜⴰⵎⴰⵣⵉⵖⵜ ⴰⴽⵯⴰⵔ ⴰⴳⵯⵎⴰⵔ",  # Tifinagh with the labialization mark U+2D6F
    "Tiṣerriḥt n yizerfan n wemdan: ɣ ɛ ḍ ṛ",  # Tamazight in Latin script
    "Plain English,\ttabs and  double spaces\nand new lines. It's 1,234,567.",
    "emoji 🇲🇦👍🏽🤖👨‍👩‍👧 and unseen scripts: 日本語 한국어 Ελληνικά",
]


def random_documents(docs_per_lang: int = 40, seed: int = 0) -> list[Document]:
    rng = random.Random(seed)
    return [Document(" ".join(rng.choices(words, k=rng.randint(3, 40))), lang, "test")
            for lang, words in WORDS.items() for _ in range(docs_per_lang)]


@pytest.fixture(scope="module")
def documents() -> list[Document]:
    return random_documents()


@pytest.fixture(scope="module")
def tokenizer(documents: list[Document]):
    return train_tokenizer(documents, vocab_size=512)


def words_of(kind: str, text: str) -> list[str]:
    """The pre-tokenizer's words as substrings of `text` (not in byte-level spelling)."""
    return [text[start:end] for _, (start, end) in
            make_pre_tokenizer(kind).pre_tokenize_str(text)]


# --- pre-tokenizer --------------------------------------------------------------------------

@pytest.mark.parametrize("text, words", [
    # Arabizi: digits inside Latin words are letters.
    ("3lach ma jitich lbare7? m9wd l7bel",
     ["3lach", " ma", " jitich", " lbare7", "?", " m9wd", " l7bel"]),
    ("sa7bi, 2ana b7al 9ra", ["sa7bi", ",", " 2ana", " b7al", " 9ra"]),
    # Numbers elsewhere: groups of at most three digits; a number with a unit is one word.
    ("Ticket 1234567 f 2024. 15km", ["Ticket", " 123", "456", "7", " f", " 202", "4", ".",
                                     " 15km"]),
    ("٢٠٢٤ م", ["٢٠٢", "٤", " م"]),
    # French elision keeps its apostrophe (both forms); English contractions as in GPT-2.
    ("l'école d’un qu'il aujourd'hui", ["l'", "école", " d’", "un", " qu'", "il", " aujourd",
                                        "'", "hui"]),
    ("It's Morocco's, don't", ["It", "'s", " Morocco", "'s", ",", " don", "'t"]),
    # Arabic script: harakat (marks) and the Moroccan letters stay in the word.
    ("اعتُمد لمّا ڭال ݣالس ڤيديو گاع", ["اعتُمد", " لمّا", " ڭال", " ݣالس", " ڤيديو", " گاع"]),
    # Tifinagh: labialization mark U+2D6F and consonant joiner U+2D7F inside the word.
    ("ⴰⴽⵯⴰⵔ ⵜⴰⵎⴰⵣⵉⵖⵜ, ⵎ\u2d7fⵏ.", ["ⴰⴽⵯⴰⵔ", " ⵜⴰⵎⴰⵣⵉⵖⵜ", ",", " ⵎ\u2d7fⵏ", "."]),
    # Tamazight in Latin script, also with a combining dot below (not NFC).
    ("lḥwerma lh\u0323werma ɣer", ["lḥwerma", " lh\u0323werma", " ɣer"]),
    # A hyphen after a letter stays with the next Latin word: Tamazight clitics, French
    # inversion and compounds. A hyphen before a space or after one is punctuation.
    ("ghur-s ad-tili yekka-dd, dit-il Tanger-Tétouan ch-chergui",
     ["ghur", "-s", " ad", "-tili", " yekka", "-dd", ",", " dit", "-il", " Tanger", "-Tétouan",
      " ch", "-chergui"]),
    ("d- tifrat - dd -s", ["d", "-", " tifrat", " -", " dd", " -", "s"]),
])
def test_siyada_pre_tokenizer_keeps_words_whole(text: str, words: list[str]) -> None:
    assert words_of("siyada", text) == words


def test_generic_pre_tokenizer_is_gpt2() -> None:
    assert words_of("generic", "3lach m9wd") == ["3", "lach", " m", "9", "wd"]
    assert words_of("generic", "اعتُمد") == ["اعت", "ُ", "مد"]
    # Where there is nothing script-specific, siyada cuts exactly like GPT-2.
    plain = 'Hello,  world!\n\n  (Yes) -- it is "fine"...  \tend\n'
    assert words_of("siyada", plain) == words_of("generic", plain)


def test_unknown_pre_tokenizer() -> None:
    with pytest.raises(DataError, match="'bpe'.*siyada"):
        make_pre_tokenizer("bpe")


# --- special tokens, round trips, files -----------------------------------------------------

def test_special_tokens_have_fixed_ids(tokenizer) -> None:
    assert (PAD_ID, BOS_ID, EOS_ID, DOC_ID) == (0, 1, 2, 3)
    assert list(SPECIAL_TOKENS) == [PAD, BOS, EOS, DOC, *RESERVED]
    assert list(SPECIAL_TOKENS.values()) == list(range(32))
    assert {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS} == SPECIAL_TOKENS
    # Special-token strings in document text are plain text, never control tokens.
    text = f"a web page with {EOS}{DOC} and <|reserved_3|> in it"
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    assert min(ids) >= len(SPECIAL_TOKENS) and tokenizer.decode(ids) == text
    assert encode_document(tokenizer, text) == [BOS_ID, *ids, EOS_ID]


def test_round_trip_in_every_script(tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    save_tokenizer(tokenizer, path)
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]  # no temporary left
    hf = PreTrainedTokenizerFast(tokenizer_file=str(path), bos_token=BOS, eos_token=EOS,
                                 pad_token=PAD)
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (BOS_ID, EOS_ID, PAD_ID)
    assert hf.convert_tokens_to_ids(DOC) == DOC_ID and len(hf) == tokenizer.get_vocab_size()
    loaded = load_tokenizer(path)
    for text in ROUND_TRIP:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        assert tokenizer.decode(ids) == text
        assert loaded.encode(text, add_special_tokens=False).ids == ids
        assert hf.encode(text) == ids and hf.decode(ids) == text


def test_no_unknown_tokens_on_random_unicode(tokenizer) -> None:
    rng = random.Random(0)
    planes = [(0x20, 0x7F), (0xA0, 0x2FFF), (0x2D30, 0x2D7F), (0x600, 0x6FF),
              (0xE000, 0xFFFD), (0x1F300, 0x1FAFF), (0x20000, 0x2A6DF)]
    for _ in range(200):
        text = "".join(chr(rng.randint(*rng.choice(planes))) for _ in range(rng.randint(1, 30)))
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        assert all(len(SPECIAL_TOKENS) <= i < tokenizer.get_vocab_size() for i in ids)
        assert tokenizer.decode(ids) == text


def test_training_is_deterministic(documents: list[Document], tmp_path: Path) -> None:
    for name in ("a", "b"):
        save_tokenizer(train_tokenizer(documents, vocab_size=400, seed=3), tmp_path / name)
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()


def test_plain_texts_train_as_one_language() -> None:
    tokenizer = train_tokenizer(["wach 3lach", "salam"] * 5, vocab_size=MIN_VOCAB_SIZE + 8)
    assert tokenizer.get_vocab_size() == MIN_VOCAB_SIZE + 8


def test_tokenizer_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"too small.*{MIN_VOCAB_SIZE}"):
        train_tokenizer(["abc"], vocab_size=MIN_VOCAB_SIZE - 1)
    with pytest.raises(DataError, match="no text"):
        train_tokenizer([Document("", "fra_Latn", "x")], vocab_size=MIN_VOCAB_SIZE)
    with pytest.raises(DataError, match="missing.json.*pretrain tokenizer train"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{not json", "utf-8")
    with pytest.raises(DataError, match="broken.json"):
        load_tokenizer(tmp_path / "broken.json")
    foreign = Tokenizer(models.BPE())  # not trained by us: no fixed special tokens
    foreign.train_from_iterator(["x y"], trainers.BpeTrainer(special_tokens=["<s>"],
                                                                show_progress=False))
    foreign.save(str(tmp_path / "foreign.json"))
    with pytest.raises(DataError, match=r"foreign.json: special token <\|pad\|> has id None"):
        load_tokenizer(tmp_path / "foreign.json")


# --- language-balanced sample ---------------------------------------------------------------

def test_language_shares_follow_the_temperature() -> None:
    sizes = {"big": 8000, "small": 1000}
    assert language_shares(sizes, 1.0) == pytest.approx({"big": 8 / 9, "small": 1 / 9})
    # T=3: 8000^(1/3) = 20 and 1000^(1/3) = 10.
    assert language_shares(sizes, 3.0) == pytest.approx({"big": 2 / 3, "small": 1 / 3})


def test_sample_meets_each_language_quota() -> None:
    documents = ([Document("b" * 100, "big", "x") for _ in range(80)]  # 8000 bytes
                 + [Document("s" * 50, "small", "x") for _ in range(20)])  # 1000 bytes
    sample = sample_for_tokenizer(documents, language_temperature=3.0, sample_bytes=6000, seed=1)
    taken = {lang: sum(len(d.text) for d in sample if d.lang == lang) for lang in ("big", "small")}
    assert taken == {"big": 4000, "small": 2000}  # 2/3 and 1/3 of 6000 bytes
    assert sum(d.lang == "small" for d in sample) == 40  # each small document twice
    everything = sample_for_tokenizer(documents, language_temperature=1.0)
    assert sorted(map(id, everything)) == sorted(map(id, documents))  # T=1, no cap: all, once

    texts = [Document(f"{lang} {i}", lang, "x") for lang in ("a", "b") for i in range(50)]
    first, again, other = (sample_for_tokenizer(texts, 3.0, 200, seed) for seed in (1, 1, 2))
    assert first == again and first != other


# --- report ---------------------------------------------------------------------------------

def test_report_arithmetic() -> None:
    bytes_only = train_tokenizer(["ab"], vocab_size=MIN_VOCAB_SIZE)  # no merges: 1 token a byte
    one_merge = train_tokenizer(["ab"], vocab_size=MIN_VOCAB_SIZE + 1)  # learns "ab"
    report = tokenizer_report(one_merge, bytes_only, {"xx": ["ab ab", "é"], "empty": [" "]})
    assert report["vocab_size"] == {"ours": MIN_VOCAB_SIZE + 1, "baseline": MIN_VOCAB_SIZE}
    assert list(report["languages"]) == ["xx"]  # no words, no row
    row = report["languages"]["xx"]
    # 3 words, 7 bytes ("é" is 2), 6 characters. Ours: "ab" | " " "ab" | 2 bytes of "é" = 5.
    assert (row["texts"], row["words"], row["bytes"], row["characters"]) == (2, 3, 7, 6)
    assert row["ours"] == pytest.approx({"tokens": 5, "tokens_per_word": 5 / 3,
                                         "bytes_per_token": 7 / 5, "chars_per_token": 6 / 5})
    assert row["baseline"] == pytest.approx({"tokens": 7, "tokens_per_word": 7 / 3,
                                             "bytes_per_token": 1, "chars_per_token": 6 / 7})
    assert row["change"] == pytest.approx(5 / 7 - 1)


def write_real_text(folder: Path) -> Path:
    """A small stand-in for ../shared/data/real-text: a few lines per file."""
    folder.mkdir(parents=True)
    udhr = {"arb": "يولد جميع الناس أحرارًا", "fra": "Tous les êtres humains naissent libres",
            "eng": "All human beings are born free", "zgh": "ⴰⵔ ⴷ ⵜⵜⵍⴰⵍⴰⵏ ⵎⵉⴷⴷⵏ ⴳⴰⵏ ⵉⵍⴻⵍⵍⵉⵜⵏ",
            "tzm": "Ttlalen akkw yemdanen d ilelliyen lh\u0323wayj"}
    for code, text in udhr.items():
        (folder / f"udhr_{code}.txt").write_text(f"{text}\n\n{text}.\n", "utf-8")
    records = [{"darija_latin": "3lach ma jitich", "darija_arabic": "علاش ما جيتيش"},
               {"darija_latin": "", "darija_arabic": "واخا"}, {"darija_latin": "wakha"}]
    (folder / "doda_darija_sentences.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
    return folder


def test_real_text_eval_sets(tmp_path: Path) -> None:
    sets = real_text_eval_sets(write_real_text(tmp_path / "real"))
    assert sorted(sets) == ["arb_Arab", "ary_Arab", "ary_Latn", "eng_Latn", "fra_Latn",
                            "tzm_Latn", "zgh_Tfng"]
    assert sets["ary_Latn"] == ["3lach ma jitich", "wakha"]  # empty and missing fields skipped
    assert sets["ary_Arab"] == ["علاش ما جيتيش", "واخا"]
    assert sets["tzm_Latn"][0].endswith("lḥwayj") and len(sets["tzm_Latn"]) == 2  # normalized
    with pytest.raises(DataError, match="real-text folder not found.*--real-text"):
        real_text_eval_sets(tmp_path / "nowhere")
    with pytest.raises(DataError, match="none of"):
        real_text_eval_sets(tmp_path)
    doda = tmp_path / "real" / "doda_darija_sentences.jsonl"
    doda.write_text(doda.read_text("utf-8") + "{oops\n", "utf-8")
    with pytest.raises(DataError, match="doda_darija_sentences.jsonl:4: not valid JSON"):
        real_text_eval_sets(tmp_path / "real")


# --- command line ---------------------------------------------------------------------------

def write_corpus(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for lang in WORDS:
        lines = [json.dumps({"text": d.text, "lang": lang}, ensure_ascii=False)
                 for d in random_documents(seed=1) if d.lang == lang]
        (folder / f"{lang}.jsonl").write_text("\n".join(lines) + "\n", "utf-8")
    return folder


def pretrain(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pretrain", *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)


@pytest.mark.e2e
def test_cli_tokenizer_train_and_report(tmp_path: Path) -> None:
    overrides = [f"data.corpus={write_corpus(tmp_path / 'corpus')}", "model.vocab_size=512",
                 f"run.dir={tmp_path / 'run'}"]
    trained = pretrain("tokenizer", "train", *overrides)
    assert trained.returncode == 0, trained.stderr
    assert load_tokenizer(tmp_path / "run" / "tokenizer.json").get_vocab_size() == 512

    real_text = write_real_text(tmp_path / "real")
    report = pretrain("tokenizer", "report", "--real-text", str(real_text), *overrides,
                      f"tokenizer.path={tmp_path / 'run' / 'tokenizer.json'}")
    assert report.returncode == 0, report.stderr
    assert "ary_Latn" in report.stdout and "tokens/word" in report.stdout
    written = json.loads((tmp_path / "run" / "tokenizer_report" / "tokenizer_report.json")
                         .read_text("utf-8"))
    assert written["vocab_size"] == {"ours": 512, "baseline": 512}
    assert len(written["languages"]) == 7 and written["real_text"] == str(real_text)
    png = (tmp_path / "run" / "tokenizer_report" / "tokenizer_report.png").read_bytes()
    assert png.startswith(b"\x89PNG")


def test_cli_tokenizer_errors_are_one_line(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tokenizer", "report", "--real-text", str(tmp_path / "nowhere"),
                 f"run.dir={tmp_path}"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("pretrain tokenizer report: error: real-text folder not found")
    assert error.count("\n") == 1
    assert main(["tokenizer", "train", f"data.corpus={tmp_path / 'nothing.jsonl'}"]) == 2
    assert "nothing.jsonl" in capsys.readouterr().err


# --- real text (optional) -------------------------------------------------------------------

@pytest.mark.skipif(not DEFAULT_REAL_TEXT.is_dir(),
                    reason=f"real text not found at {DEFAULT_REAL_TEXT}")
def test_siyada_beats_generic_on_arabizi_and_costs_little_elsewhere() -> None:
    """Trained on the bundled sample corpus, evaluated on the held-out real text.

    Holds across seeds and vocabulary sizes: Arabizi needs clearly fewer tokens per word, and
    no language is more than 2% worse (the merges Arabizi words take are missing elsewhere;
    both pre-tokenizers cut Tamazight and Arabic without harakat into the same words).
    """
    documents = config_documents(load_config())  # the sample corpus, normalized
    ours, generic = (train_tokenizer(documents, 4096, kind) for kind in ("siyada", "generic"))
    changes = {lang: row["change"] for lang, row in
               tokenizer_report(ours, generic, real_text_eval_sets(DEFAULT_REAL_TEXT))
               ["languages"].items()}
    assert changes["ary_Latn"] < -0.02, changes
    assert all(change < 0.02 for change in changes.values()), changes


@pytest.mark.skipif(not DEFAULT_REAL_TEXT.is_dir(),
                    reason=f"real text not found at {DEFAULT_REAL_TEXT}")
@pytest.mark.parametrize("seed", range(3))
def test_siyada_beats_generic_on_tamazight_latin_and_french_when_trained_on_them(
        seed: int) -> None:
    """The bundled corpus has no Tamazight in Latin script and no typographic apostrophe, so
    the rules for them only pay when such text is in the training sample. Here half of each
    UDHR translation (paragraphs drawn by `seed`) joins the sample corpus and the other half is
    measured: the hyphenated clitics (ghur-s) and the elisions (d’un) cost fewer tokens. On
    Tifinagh both pre-tokenizers cut the same words, so ours can only tie or lose the merges
    its other rules take: at most 1% here. At 8192 tokens; at 4096 this small sample runs out
    of merges before Tamazight's clitics and the result goes either way (-1.1% to +0.9%).
    """
    documents = config_documents(load_config())  # the sample corpus, normalized
    held_out = {}
    for lang, texts in real_text_eval_sets(DEFAULT_REAL_TEXT).items():
        if lang.startswith("ary"):
            continue  # DODa: covered by the test above, and ten times the size
        order = random.Random(seed).sample(range(len(texts)), len(texts))
        documents += [Document(texts[i], lang, "udhr") for i in order[:len(texts) // 2]]
        held_out[lang] = [texts[i] for i in order[len(texts) // 2:]]
    ours, generic = (train_tokenizer(documents, 8192, kind) for kind in ("siyada", "generic"))
    changes = {lang: row["change"] for lang, row in
               tokenizer_report(ours, generic, held_out)["languages"].items()}
    assert changes["tzm_Latn"] < -0.005 and changes["fra_Latn"] < -0.005, changes
    assert all(change < 0.02 for change in changes.values()), changes
    assert changes["zgh_Tfng"] < 0.01, changes


def test_a_small_language_is_repeated_at_most_max_repeats_times_in_the_sample():
    """Issue 18.21: at temperature 3 a language of a few kilobytes took ~18% of the sample,
    repeated ~36 times, which costs a large language its merges for no new words. Capped
    (UniMax), the unused share goes to the large language instead."""
    large = [Document(f"phrase numero {i} de la langue majoritaire", "fra_Latn", "a")
             for i in range(5000)]
    small = [Document(f"ⴰⵣⵓⵍ {i}", "zgh_Tfng", "b") for i in range(100)]
    sizes = {lang: sum(len(d.text.encode()) for d in docs)
             for lang, docs in (("fra_Latn", large), ("zgh_Tfng", small))}

    def repeats(sample: list[Document], lang: str) -> float:
        return sum(len(d.text.encode()) for d in sample if d.lang == lang) / sizes[lang]

    uncapped = sample_for_tokenizer(large + small, 3.0, max_repeats=0)
    capped = sample_for_tokenizer(large + small, 3.0, max_repeats=4)
    assert repeats(uncapped, "zgh_Tfng") > 20
    assert repeats(capped, "zgh_Tfng") == pytest.approx(4, rel=0.05)
    assert repeats(capped, "fra_Latn") > repeats(uncapped, "fra_Latn")
    total = sum(sizes.values())
    assert sum(len(d.text.encode()) for d in capped) == pytest.approx(total, rel=0.01)
    assert language_quotas(sizes, {"fra_Latn": 0.5, "zgh_Tfng": 0.5}, total, 0) == \
        {"fra_Latn": round(total / 2), "zgh_Tfng": round(total / 2)}
