"""Text normalization (pretrain/data/normalize.py): each rule, what it must keep, idempotence.

Invisible characters are written as \\u escapes so that every test string can be read.
"""

from __future__ import annotations

import json
import random
import unicodedata

import pytest

from pretrain.data.normalize import (
    _KEEP_LIGATURES,
    _TABLE,
    _map_characters,
    _presentation_form_table,
    normalize_text,
)
from tests.paths import REPO

ROOT = REPO
SAMPLE_CORPUS = ROOT / "pretrain" / "data" / "sample_corpus"
REAL_TEXT = ROOT.parent / "shared" / "data" / "real-text"  # optional, read-only reference data


def assert_normalizes(before: str, after: str) -> None:
    assert normalize_text(before) == after
    assert normalize_text(after) == after


def controls() -> list[str]:
    """Every C0 and C1 control character and DEL."""
    return [chr(cp) for cp in [*range(0x20), *range(0x7F, 0xA0)]]


# --- NFC, and the NFKC pitfalls -----------------------------------------------------------------

@pytest.mark.parametrize(("before", "after"), [
    ("d\u0323", "\u1e0d"),  # ḍ
    ("r\u0323 s\u0323 t\u0323 z\u0323", "\u1e5b \u1e63 \u1e6d \u1e93"),  # ṛ ṣ ṭ ẓ
    ("D\u0323", "\u1e0c"),  # Ḍ
    ("g\u0306", "\u011f"),  # ğ
    ("c\u030c", "\u010d"),  # č
    ("e\u0301te\u0301", "\u00e9t\u00e9"),  # été
    ("\u0627\u0653", "\u0622"),  # alef + madda above -> آ
    ("\u0627\u0654", "\u0623"),  # alef + hamza above -> أ
])
def test_nfc_composes(before: str, after: str) -> None:
    assert_normalizes(before, after)


def test_nfc_orders_arabic_marks_canonically() -> None:
    # Shadda + fatha and fatha + shadda render the same; NFC puts them in one (canonical) order.
    assert normalize_text("\u0628\u0651\u064e") == normalize_text("\u0628\u064e\u0651")


def test_tifinagh_labialization_mark_is_kept_unlike_nfkc() -> None:
    word = "\u2d33\u2d6f"  # ⴳⵯ (labialized g)
    assert unicodedata.normalize("NFKC", word) == "\u2d33\u2d61"  # the pitfall: ⴳⵡ
    assert_normalizes(word, word)


def test_rial_sign_is_kept_unlike_nfkc() -> None:
    text = "100 \ufdfc"
    assert unicodedata.normalize("NFKC", text) == "100 \u0631\u06cc\u0627\u0644"  # Persian yeh
    assert_normalizes(text, text)


# --- Arabic presentation forms ------------------------------------------------------------------

@pytest.mark.parametrize(("before", "after"), [
    ("\ufee3\ufeae\ufea3\ufe92\ufe8e", "\u0645\u0631\u062d\u0628\u0627"),  # ﻣﺮﺣﺒﺎ -> مرحبا
    ("\ufefb", "\u0644\u0627"),  # ﻻ -> لا
    ("\ufefc", "\u0644\u0627"),  # final form
    ("\ufef5\ufef6", "\u0644\u0622\u0644\u0622"),  # لآ
    ("\ufef7\ufef8", "\u0644\u0623\u0644\u0623"),  # لأ
    ("\ufef9\ufefa", "\u0644\u0625\u0644\u0625"),  # لإ
    ("\ufb92\ufb93\ufb94\ufb95", "\u06af" * 4),  # GAF forms -> گ
    ("\ufbd3\ufbd4\ufbd5\ufbd6", "\u06ad" * 4),  # NG forms -> ڭ
    ("\ufb6a\ufb6b\ufb6c\ufb6d", "\u06a4" * 4),  # VEH forms -> ڤ
    ("\ufe93\ufe94", "\u0629\u0629"),  # ta marbuta forms -> ة
    ("\ufeef\ufef0", "\u0649\u0649"),  # alef maqsura forms -> ى (not ya)
    ("\ufef1", "\u064a"),  # ya -> ي
    ("\ufe80", "\u0621"),  # hamza -> ء
    ("\ufc00", "\u0626\u062c"),  # a two-letter ligature: ئج
    ("\u0628\ufe79", "\u0628\u064f"),  # medial damma (tatweel + damma): the tatweel goes
    ("\u0628\ufe7d", "\u0628\u0651"),  # medial shadda
])
def test_presentation_forms_fold_to_base_letters(before: str, after: str) -> None:
    assert_normalizes(before, after)


def test_every_tagged_presentation_form_folds() -> None:
    table = _presentation_form_table()
    for first, last in ((0xFB50, 0xFDFF), (0xFE70, 0xFEFF)):
        for cp in range(first, last + 1):
            tag = unicodedata.decomposition(chr(cp)).split()[:1]
            if tag and tag[0] in ("<isolated>", "<initial>", "<medial>", "<final>"):
                assert (cp in table) != (cp in _KEEP_LIGATURES), hex(cp)
    assert len(table) > 700  # letters, lam-alef and the two- and three-letter ligatures
    for cp, letters in table.items():
        out = normalize_text(chr(cp))
        assert not any(0xFB50 <= ord(c) <= 0xFDFF or 0xFE70 <= ord(c) <= 0xFEFF for c in out), \
            hex(cp)
        assert letters.strip(), hex(cp)


@pytest.mark.parametrize("ligature", [
    "\ufdf2",  # ﷲ ALLAH
    "\ufdfa",  # ﷺ SALLALLAHOU ALAYHE WASALLAM
    "\ufdfb",  # ﷻ JALLAJALALOUHOU
    "\ufdfc",  # ﷼ RIAL SIGN
    "\ufdfd",  # ﷽ BISMILLAH (no decomposition)
    "\ufdf0",  # ﷰ Koranic stop sign
])
def test_word_ligatures_are_kept(ligature: str) -> None:
    text = f"\u0645\u062d\u0645\u062f {ligature}"
    assert_normalizes(text, text)


# --- Removed characters -------------------------------------------------------------------------

def test_tatweel_is_removed() -> None:
    assert_normalizes("\u0645\u0640\u0640\u0640\u0631\u062d\u0628\u0627",  # مـــرحبا
                      "\u0645\u0631\u062d\u0628\u0627")


@pytest.mark.parametrize("invisible", [
    "\u200b",  # ZERO WIDTH SPACE
    "\u200c",  # ZERO WIDTH NON-JOINER
    "\u2060",  # WORD JOINER
    "\ufeff",  # BOM / ZERO WIDTH NO-BREAK SPACE
    "\u00ad",  # SOFT HYPHEN
    "\u200e", "\u200f",  # LRM, RLM
    "\u061c",  # ARABIC LETTER MARK
    "\u202a", "\u202b", "\u202c", "\u202d", "\u202e",  # embeddings, pop, overrides
    "\u2066", "\u2067", "\u2068", "\u2069",  # isolates
])
def test_invisible_characters_are_removed(invisible: str) -> None:
    assert_normalizes(f"\u0633\u0644\u0627\u0645{invisible}\u0639\u0644\u064a\u0643\u0645",
                      "\u0633\u0644\u0627\u0645\u0639\u0644\u064a\u0643\u0645")
    assert_normalizes(f"{invisible}bon{invisible}jour{invisible}", "bonjour")


def test_bom_at_the_start_is_removed() -> None:
    assert_normalizes("\ufeffAzul", "Azul")


@pytest.mark.parametrize("control", ["\x00", "\x07", "\x1b", "\x1f", "\x7f", "\x80", "\x9f"])
def test_control_characters_are_removed(control: str) -> None:
    assert_normalizes(f"a{control}b", "ab")


def test_every_control_character_is_removed_or_becomes_whitespace() -> None:
    for c in controls():
        assert normalize_text(f"a{c}b") in ("ab", "a b", "a\nb"), repr(c)


# --- ZWJ ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("emoji", [
    "\U0001f468\u200d\U0001f469\u200d\U0001f467",  # 👨‍👩‍👧 family
    "\U0001f3f3\ufe0f\u200d\U0001f308",  # 🏳️‍🌈 rainbow flag (VS16 before the ZWJ)
    "\U0001f469\U0001f3fd\u200d\U0001f4bb",  # 👩🏽‍💻 (skin tone before the ZWJ)
    "\u2764\ufe0f\u200d\U0001f525",  # ❤️‍🔥
    "\U0001f3c3\u200d\u2640\ufe0f",  # 🏃‍♀️ (a Misc Symbols character after the ZWJ)
    "\U0001f408\u200d\u2b1b",  # 🐈‍⬛
])
def test_zwj_in_emoji_sequences_is_kept(emoji: str) -> None:
    text = f"\u0645\u0628\u0631\u0648\u0643 {emoji}!"
    assert_normalizes(text, text)


@pytest.mark.parametrize(("before", "after"), [
    ("\u0628\u200d\u0628", "\u0628\u0628"),  # between Arabic letters
    ("\u2d30\u200d\u2d63", "\u2d30\u2d63"),  # between Tifinagh letters
    ("a\u200db", "ab"),
    ("\u200d\U0001f600", "\U0001f600"),  # at the start
    ("\U0001f600\u200d", "\U0001f600"),  # at the end
    ("\U0001f600\u200d\u0628", "\U0001f600\u0628"),  # emoji then a letter
    ("\u0628\u200d\U0001f600", "\u0628\U0001f600"),  # letter then an emoji
    ("\U0001f600\u200d\u200d\U0001f600", "\U0001f600\U0001f600"),  # doubled
    ("\U0001f600\u200d \U0001f600", "\U0001f600 \U0001f600"),  # before a space
])
def test_other_zwj_is_removed(before: str, after: str) -> None:
    assert_normalizes(before, after)


# --- Whitespace and line breaks -----------------------------------------------------------------

@pytest.mark.parametrize("line_break", ["\r\n", "\r", "\u2028", "\u2029", "\u0085", "\x0b", "\x0c"])
def test_line_breaks_become_newline(line_break: str) -> None:
    assert_normalizes(f"one{line_break}two", "one\ntwo")


def test_crlf_is_one_line_break() -> None:
    assert_normalizes("a\r\nb\r\n\r\nc", "a\nb\n\nc")


@pytest.mark.parametrize("space", [
    "\t", "\u00a0", "\u202f", "\u2000", "\u2005", "\u2009", "\u200a", "\u3000", "\u1680", "\u205f",
])
def test_unicode_spaces_become_space(space: str) -> None:
    assert_normalizes(f"a{space}b", "a b")


def test_every_unicode_space_separator_becomes_space() -> None:
    spaces = [chr(cp) for cp in range(0x110000) if unicodedata.category(chr(cp)) == "Zs"]
    assert len(spaces) >= 17
    for space in spaces:
        assert normalize_text(f"a{space}b") == "a b", hex(ord(space))


def test_french_narrow_no_break_space_becomes_space() -> None:
    assert_normalizes("\u00ab\u202fBonjour\u202f!\u202f\u00bb", "\u00ab Bonjour ! \u00bb")


@pytest.mark.parametrize(("before", "after"), [
    ("a  b\t \u00a0c", "a b c"),  # runs collapse
    ("line one   \nline two\t\n", "line one\nline two"),  # line ends stripped
    ("p1\n\n\n\n\np2", "p1\n\np2"),  # at most one empty line
    ("p1\n  \n \t\n\np2", "p1\n\np2"),  # lines of spaces are empty lines
    ("p1\n\np2", "p1\n\np2"),  # paragraph break kept
    ("  \n\n doc \n\n ", "doc"),  # document stripped
    ("a\n  b", "a\n b"),  # a space at a line start is kept (collapsed)
    ("", ""),
    (" \t\r\n\u00a0\ufeff", ""),
])
def test_whitespace(before: str, after: str) -> None:
    assert_normalizes(before, after)


# --- Kept as written ----------------------------------------------------------------------------

KEPT = [
    # Harakat on a letter, one at a time, and the superscript (dagger) alef.
    *[f"\u0628{chr(cp)}" for cp in range(0x064B, 0x0660)],
    "\u0647\u0670\u0630\u0627",  # هٰذا
    "\u0643\u064e\u062a\u064e\u0628\u064e",  # كَتَبَ
    "\u0621 \u0623 \u0625 \u0624 \u0626 \u0622",  # hamza forms: ء أ إ ؤ ئ آ
    "\u0627 \u0623 \u0625 \u0622 \u0671",  # alef variants: ا أ إ آ ٱ
    "\u0645\u062f\u0631\u0633\u0629 \u0645\u062f\u0631\u0633\u0647",  # مدرسة vs مدرسه
    "\u0639\u0644\u0649 \u0639\u0644\u064a",  # على vs علي
    "\u06ad \u06af \u0763 \u06a4",  # ڭ گ ݣ ڤ
    "\u0628\u0627\u06ad\u0627",  # باڭا
    "\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669",  # Arabic-Indic digits
    "\u06f0\u06f1\u06f2\u06f3\u06f4\u06f5\u06f6\u06f7\u06f8\u06f9",  # extended digits
    "".join(chr(cp) for cp in range(0x2D30, 0x2D68)) + "\u2d6f\u2d70\u2d7f",  # Tifinagh
    "\u2d30\u2d63\u2d53\u2d4d",  # ⴰⵣⵓⵍ
    "\u1e0d \u1e5b \u1e63 \u1e6d \u1e93 \u025b \u0263 \u011f \u010d",  # ḍ ṛ ṣ ṭ ẓ ɛ ɣ ğ č
    "\u1e0c \u1e5a \u1e62 \u1e6c \u1e92 \u0190 \u0194 \u011e \u010c",  # Ḍ Ṛ Ṣ Ṭ Ẓ Ɛ Ɣ Ğ Č
    "\u00e0\u00e2\u00e7\u00e9\u00e8\u00ea\u00eb\u00ee\u00ef\u00f4\u00fb\u00f9\u00fc\u00ff"
    "\u0153\u00e6 \u00c9\u00c0\u00c7",  # French accents
    "\u00ab Bonjour \u00bb, l'\u00e9t\u00e9 \u2014 c'est \u00e7a\u2026",  # French punctuation
    "\U0001f600 \U0001f44d\U0001f3fd \u2764\ufe0f \U0001f1f2\U0001f1e6",  # emoji, 🇲🇦 flag
    "wach nta mzyan? 3afak, 7ta l-ghedda",  # Arabizi: digits as letters
    "\u0634\u0646\u0648 \u0643\u062a\u062f\u064a\u0631\u061f",  # شنو كتدير؟ (Arabic question mark)
    "\u2d30\u2d63\u2d53\u2d4d, \u2d4e\u2d30\u2d4f\u2d63\u2d30\u2d3d\u2d49\u2d4f?",  # ⵎⴰⵏⵣⴰⴽⵉⵏ
    "Azul, amek a tgiḍ? Ad ak-iɛawen Ṛebbi.",
    "line one\nline two\n\nnew paragraph",
]


@pytest.mark.parametrize("text", KEPT)
def test_kept_as_written(text: str) -> None:
    assert normalize_text(text) == text


# --- The fast path and str.translate agree ------------------------------------------------------

TRICKY = (
    # presentation forms, including lam-alef, harakat forms and kept word ligatures
    "\ufee3\ufeae\ufea3\ufe92\ufe8e\ufefb\ufef5\ufb92\ufbd3\ufb6a\ufe70\ufe71\ufe7d\ufc5e\ufcf2"
    "\ufdf2\ufdfa\ufdfc\ufdfd"
    "\u0640\u200b\u200c\u200d\u2060\ufeff\u00ad\u200e\u200f\u061c\u202a\u202e\u2066\u2069"
    "\x00\x1b\x7f\x85\x9f\t\r\n\x0b\x0c \u00a0\u202f\u2003\u3000\u1680\u2028\u2029"
    "\u0301\u0323\u0306\u030c\u064b\u064e\u0651\u0653\u0654\u0670"  # combining marks
    "adegsrtzAE\u0627\u0628\u0644\u0645\u0648\u06ad\u06af\u0763\u06a4\u0629\u0649\u0660"
    "\u2d30\u2d33\u2d6f\u2d61\u2d7f"  # Tifinagh
    "\U0001f468\U0001f469\U0001f3fd\U0001f3f3\ufe0f\U0001f308\u2764\u2640"  # emoji parts
)


def random_strings(seed: int, count: int, max_len: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choices(TRICKY, k=rng.randrange(max_len))) for _ in range(count)]


def test_character_map_paths_agree() -> None:
    rng = random.Random(1)
    clean = "\u0633\u0644\u0627\u0645 \u0639\u0644\u064a\u0643\u0645 bonjour \u2d30\u2d63 "
    dense = random_strings(seed=2, count=500, max_len=40)  # mostly mapped: str.translate
    sparse = [clean * 20 + s + clean * 20 for s in random_strings(seed=3, count=500, max_len=6)]
    for text in dense + sparse + [clean, "", rng.choice(dense)]:
        assert _map_characters(text) == text.translate(_TABLE), ascii(text)


# --- Idempotence --------------------------------------------------------------------------------

def idempotence_failures(texts: list[str]) -> list[str]:
    failures = []
    for text in texts:
        once = normalize_text(text)
        if normalize_text(once) != once:
            failures.append(text)
    return failures


def test_idempotent_on_examples() -> None:
    examples = [*KEPT, TRICKY, *controls(), *(chr(cp) for cp in _TABLE)]
    assert not idempotence_failures(examples)


def test_idempotent_on_random_tricky_strings() -> None:
    failures = idempotence_failures(random_strings(seed=0, count=5000, max_len=30))
    assert not failures, [ascii(f) for f in failures[:5]]


def test_idempotent_on_sample_corpus() -> None:
    texts = [json.loads(line)["text"]
             for path in sorted(SAMPLE_CORPUS.glob("*.jsonl"))
             for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(texts) > 50
    assert not idempotence_failures(texts)


def real_texts() -> list[str]:
    texts = []
    for path in sorted(REAL_TEXT.glob("udhr_*.txt")):
        texts += path.read_text(encoding="utf-8").splitlines()
    doda = REAL_TEXT / "doda_darija_sentences.jsonl"
    for line in doda.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        texts += [record.get("darija_latin") or "", record.get("darija_arabic") or ""]
    return texts


@pytest.mark.skipif(not (REAL_TEXT / "doda_darija_sentences.jsonl").is_file(),
                    reason=f"reference data not present: {REAL_TEXT} (optional, outside the repo)")
def test_idempotent_on_real_text() -> None:
    texts = real_texts()
    assert len(texts) > 80_000
    assert not idempotence_failures(texts)
    # Real text in our languages is (nearly) untouched: only a few lines change at all.
    changed = sum(normalize_text(text) != text for text in texts)
    assert changed < len(texts) // 100
