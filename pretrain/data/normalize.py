"""Light, script-safe text normalization, applied to every document before dedup and tokenizing.

`normalize_text(text)` makes byte-different spellings of the same visible text identical (so exact
dedup and the tokenizer see one form) without changing what a reader of Darija, Arabic, Tamazight
(Tifinagh or Latin) or French would read. In order:

1. Line breaks: CRLF, CR, U+2028, U+2029, U+0085 NEL, VT and FF become "\\n".
2. One per-character map (_TABLE, built at import; the same as `str.translate(_TABLE)`):
   - Arabic presentation forms (U+FB50-U+FDFF, U+FE70-U+FEFF) fold to their base letters, using
     the Unicode decomposition of each form tagged <isolated>/<initial>/<medial>/<final>/<compat>
     (lam-alef ﻻ -> لا, ﮔ -> گ, ﯓ -> ڭ, ﭪ -> ڤ). Word ligatures are kept (see _KEEP_LIGATURES).
   - Removed: tatweel U+0640; zero-width and bidi controls (ZWSP, ZWNJ, WJ, BOM/ZWNBSP, soft
     hyphen, LRM, RLM, ALM, embeddings/overrides U+202A-U+202E, isolates U+2066-U+2069); every
     other C0/C1 control character except "\\n" (NUL, ESC, DEL, ...).
   - Tab and every Unicode space separator (NBSP, NNBSP, U+2000-U+200A, ...) become " ".
3. ZWJ (U+200D) is removed unless it joins two pictographic characters (an emoji ZWJ sequence such
   as a family or a rainbow flag), see _STRAY_ZWJ.
4. Unicode NFC, so "d" + U+0323 and "ḍ" are one string.
5. Spaces: runs collapse to one, spaces before a line break go, 3+ newlines become 2 (paragraph
   breaks stay), and the document is stripped.

Everything else is kept as written: harakat, hamza forms, alef variants, ta marbuta vs ha, alef
maqsura vs ya, the Moroccan letters ڭ گ ݣ ڤ, Arabic-Indic digits, Tifinagh, Latin letters with
diacritics, emoji. normalize_text is idempotent: applying it twice gives the same as once.

Why NFC and not NFKC: NFKC also applies compatibility mappings, which are wrong for our scripts.
It folds the Tifinagh labialization mark U+2D6F (ⵯ, as in ⴳⵯ) into the letter U+2D61 (ⵡ),
changing the word, and turns U+FDFC RIAL SIGN into ریال spelled with the Persian yeh U+06CC. It
also folds superscripts, fractions, full-width forms and so on. We take only the one compatibility
fold we want (Arabic presentation forms), from an explicit table.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["normalize_text"]

# --- Arabic presentation forms ------------------------------------------------------------------
# These code points are glyph shapes (a letter's initial/medial/final/isolated form, or a ligature
# of 2-3 letters) that old encodings, PDF extraction and some keyboards emit instead of the letters
# themselves. Rendering joins the base letters into the same shapes, so folding loses nothing.
_PRESENTATION_RANGES = ((0xFB50, 0xFDFF), (0xFE70, 0xFEFF))
_FOLD_TAGS = frozenset({"<isolated>", "<initial>", "<medial>", "<final>", "<compat>"})

# Kept as written even though they have a tagged decomposition: whole words or phrases encoded as
# one symbol. Writers type them deliberately (honorifics after a name, ﷲ in titles), they are
# rare, and the decomposition is only an approximation of the spelling: ﷲ -> الله drops the
# shadda and superscript alef, ﷵ -> صلعم is an abbreviation, the Koranic stop signs U+FDF0/U+FDF1
# use the Urdu yeh barree, ﷺ expands one symbol into four words. U+FDFC RIAL SIGN is a currency
# symbol, not letters (its decomposition uses the Persian yeh). The other word ligatures
# (U+FD40-U+FD4F, U+FDCF, U+FDFD-U+FDFF) have no decomposition and so stay without being listed.
_KEEP_LIGATURES = frozenset(range(0xFDF0, 0xFDFD))  # U+FDF0 ... U+FDFC


def _presentation_form_table() -> dict[int, str]:
    """Map each foldable presentation form to its base letters (the decomposition's code points)."""
    table: dict[int, str] = {}
    for first, last in _PRESENTATION_RANGES:
        for cp in range(first, last + 1):
            if cp in _KEEP_LIGATURES:
                continue
            tag, *code_points = unicodedata.decomposition(chr(cp)).split() or [""]
            if tag in _FOLD_TAGS:
                table[cp] = "".join(chr(int(h, 16)) for h in code_points)
    return table


# --- Invisible characters, controls, spaces, line breaks ----------------------------------------
_TATWEEL = "\u0640"  # kashida: stretches a joined letter for justification, not a letter

# Invisible characters that only steer rendering. ZWNJ matters in Persian (and Indic scripts), not
# in Darija/Arabic/Tamazight, so it goes. ZWJ is handled separately (step 3).
_INVISIBLE = (
    "\u200b"  # ZERO WIDTH SPACE
    "\u200c"  # ZERO WIDTH NON-JOINER
    "\u2060"  # WORD JOINER
    "\ufeff"  # BOM / ZERO WIDTH NO-BREAK SPACE
    "\u00ad"  # SOFT HYPHEN
    "\u200e\u200f"  # LEFT-TO-RIGHT MARK, RIGHT-TO-LEFT MARK
    "\u061c"  # ARABIC LETTER MARK
    "\u202a\u202b\u202c\u202d\u202e"  # bidi embeddings, pop, overrides
    "\u2066\u2067\u2068\u2069"  # bidi isolates
)

# Line and paragraph separators. VT and FF are page/line breaks in extracted text: removing them
# would glue two words together, so they become line breaks too. "\r\n" is replaced first.
_LINE_BREAKS = "\r\x0b\x0c\x85\u2028\u2029"

# Tab and all Unicode space separators (general category Zs). NBSP and U+202F NARROW NBSP (which
# French typography puts before ; : ! ? » and after «) become plain spaces: the no-break property
# is layout, and French text on the web uses both forms, so one form is better for dedup and BPE.
_SPACES = "\t\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" \
    "\u202f\u205f\u3000"

# All other C0 and C1 controls and DEL: NUL, ESC (terminal colour codes), etc.
_CONTROLS = "".join(
    chr(cp) for cp in [*range(0x00, 0x20), *range(0x7F, 0xA0)]
    if chr(cp) not in "\n" + _LINE_BREAKS + _SPACES
)


def _translation_table() -> dict[int, str | None]:
    """The per-character map of step 2: folds, removals, spaces and line breaks."""
    chars: dict[int, str | None] = {}
    for c in _TATWEEL + _INVISIBLE + _CONTROLS:
        chars[ord(c)] = None
    for c in _SPACES:
        chars[ord(c)] = " "
    for c in _LINE_BREAKS:
        chars[ord(c)] = "\n"
    # A fold may itself produce a character removed above (the medial harakat forms U+FE71 etc.
    # decompose to tatweel + mark), and translate does not rescan its output: apply the character
    # map to each fold's letters so one pass is enough.
    folds = {cp: letters.translate(chars) for cp, letters in _presentation_form_table().items()}
    table = {**folds, **chars}
    # No replacement contains a mapped character, so the map is idempotent and the characters can
    # be replaced one at a time in any order (see _map_characters).
    assert len(table) == len(folds) + len(chars)
    assert not any(ord(c) in table for value in table.values() if value for c in value)
    return table


_TABLE = _translation_table()
_REPLACEMENT = {chr(cp): value or "" for cp, value in _TABLE.items()}
_MAPPED_CHAR = re.compile("[" + "".join(re.escape(c) for c in sorted(_REPLACEMENT)) + "]")


def _map_characters(text: str) -> str:
    """Apply _TABLE; the same result as text.translate(_TABLE), faster on the usual document.

    str.translate costs ~100 ns on every character of a non-ASCII string (a dict lookup and, for
    an unmapped character, a KeyError): 15-25 MB/s on Arabic text. Most documents have no mapped
    character or a few distinct ones (NBSP, RLM, tatweel), and one str.replace per distinct
    character only scans the text; translate is kept for text that is mostly mapped characters
    (presentation-form text from legacy encodings), where its single pass is faster.
    """
    found = _MAPPED_CHAR.findall(text)
    if not found:
        return text
    if len(found) * 8 > len(text):
        return text.translate(_TABLE)
    for c in set(found):
        text = text.replace(c, _REPLACEMENT[c])
    return text


# --- ZWJ ----------------------------------------------------------------------------------------
# ZWJ is meaningless between Arabic, Tifinagh or Latin letters (it only requests a joining glyph),
# but it builds emoji ZWJ sequences (👨‍👩‍👧, 🏳️‍🌈, 👩🏽‍💻); removing it there splits one emoji into
# several. Rule: keep a ZWJ whose left neighbour is pictographic (or the emoji presentation
# selector U+FE0F, as in 🏳️‍🌈) and whose right neighbour is pictographic; remove every other ZWJ.
# "Pictographic" is approximated by the blocks holding the Extended_Pictographic characters that
# appear in emoji sequences (unicodedata does not expose that property).
_PICTOGRAPHIC = (
    "\u2300-\u23ff"  # Miscellaneous Technical (⌚ ⏰)
    "\u2600-\u27bf"  # Miscellaneous Symbols, Dingbats (♀ ♂ ⚕ ❤ ✈)
    "\u2b00-\u2bff"  # Miscellaneous Symbols and Arrows (⬛)
    "\U0001f000-\U0001faff"  # emoji blocks, skin-tone modifiers and hair components included
)
_STRAY_ZWJ = re.compile(
    f"(?<![{_PICTOGRAPHIC}\ufe0f])\u200d"  # not after an emoji
    f"|\u200d(?![{_PICTOGRAPHIC}])"  # or not before one
)

# --- Whitespace ---------------------------------------------------------------------------------
_SPACE_RUN = re.compile(" {2,}")
_SPACES_BEFORE_NEWLINE = re.compile(" +\n")
_NEWLINE_RUN = re.compile("\n{3,}")


def normalize_text(text: str) -> str:
    """Return `text` normalized by the rules in this module's docstring (idempotent, pure)."""
    text = _map_characters(text.replace("\r\n", "\n"))
    if "\u200d" in text:
        text = _STRAY_ZWJ.sub("", text)
    # After the removals, so that a mark separated from its letter by e.g. a ZWSP composes now
    # rather than on a second pass. The whitespace steps below cannot undo NFC.
    text = unicodedata.normalize("NFC", text)
    # The `in` checks skip the regex engine on the common, already clean document.
    if "  " in text:
        text = _SPACE_RUN.sub(" ", text)
    if " \n" in text:
        text = _SPACES_BEFORE_NEWLINE.sub("\n", text)
    if "\n\n\n" in text:
        text = _NEWLINE_RUN.sub("\n\n", text)
    return text.strip(" \n")
