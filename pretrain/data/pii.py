"""Personal data scrubbing for Morocco's law 09-08 (the CNDP's remit): find and replace.

`scrub(text)` replaces every piece of personal data it finds with a typed placeholder and counts
what it replaced per type; the curation pipeline adds those counts up per language for the data
card. The types, their placeholder and what is recognised:

- iban, <IBAN>: `MA` + 2 check digits + 24 digits (spaces allowed), ISO 13616 mod-97 check.
- rib, <RIB>: a Moroccan RIB, 24 digits (bank 3, city 3, account 16, key 2; spaces, dots or
  dashes between groups) whose key checks (the 24-digit number is 0 mod 97).
- card, <CARD>: 13-19 digits with a card network's prefix and a valid Luhn digit, either in
  groups (4-4-4-4, 4-6-5; spaces or dashes) or, written as one run, near a word such as carte,
  card, visa, بطاقة, لاكارط (a bare 16-digit order number passes Luhn one time in ten).
- email, <EMAIL>: local@domain.tld, also as local [at] domain [dot] tld or local(at)domain.tld.
- ip, <IP>: IPv4 (4 octets 0-255) and IPv6 (both checked by `ipaddress`).
- phone, <PHONE>: Moroccan numbers: +212, 00212 or 0, then 5, 6 or 7 (fixed, mobile) and 8
  digits, with spaces, dots, dashes or slashes; "(+212) 6...", "+212 (0)6 ..." too.
- cin, <CIN>: the national ID card number (1-2 Latin letters then 1-6 digits), only near a
  context word in French, Arabic or Darija (CIN, CNIE, carte nationale, البطاقة الوطنية,
  لاكارط, ...) so that product codes and flight numbers are left alone.

Checks run in this order, from the most specific to the least, and a span taken by one type
cannot be taken by another: an IBAN's digits are not also a RIB or a card. Digits are Unicode
digits, so a phone number written with Arabic-Indic digits (٠٦١٢...) is found too. Recall on
synthetic Moroccan personal data (pretrain/data/pii_samples.py) and the false-positive rate on
look-alikes (prices, dates, years, product codes, numbers in prose) are measured by
bench/pii.py and stated in the README.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterator

__all__ = ["PII_TYPES", "PLACEHOLDERS", "find", "scrub"]

PLACEHOLDERS: dict[str, str] = {
    "iban": "<IBAN>",
    "rib": "<RIB>",
    "card": "<CARD>",
    "email": "<EMAIL>",
    "ip": "<IP>",
    "phone": "<PHONE>",
    "cin": "<CIN>",
}
PII_TYPES = tuple(PLACEHOLDERS)
Finder = Callable[[str], Iterator[tuple[int, int]]]

# A number never glued to another digit or a letter on either side, nor one separator away from
# another digit (so a match is never the middle of a longer number, of a grouped number, or of
# a word such as a product reference). Arabizi writes letters with digits ("ta3 06...",
# "... 3afak"): a digit inside a word does not count as a neighbouring number.
_START = r"(?<![\w.,])(?<!(?<![^\W\d_])\d[ .\-])"
_END = r"(?![.,]?\w)(?![ .\-]\d+(?:\W|$))"
_SEP = r"[ .\-]?"  # one optional separator between digit groups

_IBAN = re.compile(_START + r"MA\d{2}(?: ?\d){24}" + _END, re.IGNORECASE)
_RIB = re.compile(_START + r"\d(?:" + _SEP + r"\d){23}" + _END)
_CARD = re.compile(_START + r"\d(?:[ \-]?\d){12,18}" + _END)
_CARD_GROUPED = re.compile(r"\d{4}([ \-])\d{4}\1\d{4}\1\d{1,7}|\d{4}([ \-])\d{6}\2\d{4,5}")
_CARD_CONTEXT = re.compile(
    r"\bcarte\b|\bcard\b|\bvisa\b|master\s?card|\bamex\b|\bCB\b|\bCMI\b|\bkart\b|"
    r"بطاقة|البطاقة|لاكارط|الكارط|كارط|فيزا", re.IGNORECASE)
_CARD_WINDOW = 40
# name@domain.tld, and the forms written to dodge harvesters: name [at] domain [dot] tld,
# name(at)domain.tld (a bare "at"/"dot" in prose is not taken).
_AT = r"(?:@|\s?[\[(]\s?(?:at|arobase)\s?[\])]\s?)"
_DOT = r"(?:\.|\s?[\[(]\s?(?:dot|point)\s?[\])]\s?)"
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+" + _AT + r"[\w-]+(?:" + _DOT + r"[\w-]+)*" + _DOT
                    + r"[^\W\d_]{2,}(?![\w-])", re.IGNORECASE)
_IPV4 = re.compile(r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?![\w]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_ZERO, _TWO_ONE_TWO, _FIVE_TO_SEVEN = "[0٠۰]", "(?:212|٢١٢|۲۱۲)", "[5-7٥-٧۵-۷]"  # + Arabic-Indic
_PHONE_SEP = r"[ .\-/]?"  # 06/61/23/45/67 too (a date has too few digits to match)
_PHONE = re.compile(
    r"(?<![\w+(])(?:\(?(?:\+|" + _ZERO + "{2})" + _TWO_ONE_TWO + r"\)?" + _SEP
    + r"(?:\(" + _ZERO + r"\)" + _SEP + r")?|" + _ZERO + ")"
    + _FIVE_TO_SEVEN + r"(?:" + _PHONE_SEP + r"\d){8}" + _END)
_CIN = re.compile(r"(?<![\w])[A-Za-z]{1,2}" + _SEP + r"\d{1,6}(?![\w])")

# Words that announce an ID card number; a CIN-shaped code counts only within _CIN_WINDOW
# characters after one of them (or just before it: "BE123456 (CIN)").
_CIN_CONTEXT = re.compile(
    r"\bC\.?\s?I\.?\s?N\b|\bCNIE\b|carte\s+(?:nationale|d'identit[ée]|d’identit[ée])|"
    r"pi[èe]ce\s+d'identit[ée]|num[ée]ro\s+(?:d'identit[ée]|national)|\bla\s?kart\b|\blakarta?\b|"
    r"البطاقة\s+الوطنية|بطاقة\s+(?:التعريف|الهوية)|رقم\s+البطاقة|ب\.\s?ت\.?\s?و|لاكارط|لاكارت|"
    r"الكارط|البطاقة", re.IGNORECASE)
_CIN_WINDOW = 40

_CARD_PREFIXES = ("4", "34", "37", "36", "38", "30", "35", "51", "52", "53", "54", "55",
                  "2221", "2222", "2223", "2224", "2225", "2226", "2227", "2228", "2229",
                  "223", "224", "225", "226", "227", "228", "229", "23", "24", "25", "26",
                  "270", "271", "2720", "6011", "65", "62")


def _digits(text: str) -> str:
    return "".join(str(int(ch)) for ch in text if ch.isdigit())


def _mod97(digits: str) -> int:
    return int(digits) % 97


def _iban_ok(match: str) -> bool:
    compact = re.sub(r"\s", "", match).upper()
    rearranged = compact[4:] + compact[:4]
    numeric = "".join(str(int(ch, 36)) for ch in rearranged)
    return _mod97(numeric) == 1


def _rib_ok(match: str) -> bool:
    digits = _digits(match)
    return len(digits) == 24 and _mod97(digits) == 0 and int(digits) != 0


def _luhn_ok(match: str) -> bool:
    digits = _digits(match)
    if not 13 <= len(digits) <= 19 or not digits.startswith(_CARD_PREFIXES):
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _ip_ok(match: str) -> bool:
    if ":" in match and match.count(":") < 2:
        return False
    if ":" in match and not re.search(r"[0-9A-Fa-f]", match):
        return False
    try:
        address = ipaddress.ip_address(match)
    except ValueError:
        return False
    # A time such as 10:30:00 is not an address (ipaddress refuses it anyway); a version such as
    # 1.2.3.4 is an address by shape and is taken: the cost of a false hit is one placeholder.
    return not (address.version == 6 and match.count(":") == 2 and "::" not in match)


def _matches(pattern: re.Pattern[str], check: Callable[[str], bool]) -> Finder:
    def spans(text: str) -> Iterator[tuple[int, int]]:
        return (m.span() for m in pattern.finditer(text) if check(m.group()))
    return spans


def _near(context: re.Pattern[str], window: int, text: str, start: int, end: int) -> bool:
    """A context word ends at most `window` characters before [start, end), or starts just after."""
    return any(0 <= start - c.end() <= window or 0 <= c.start() - end <= 3
               for c in context.finditer(text))


def _card_spans(text: str) -> Iterator[tuple[int, int]]:
    for m in _CARD.finditer(text):
        if _luhn_ok(m.group()) and (_CARD_GROUPED.fullmatch(m.group()) is not None
                                    or _near(_CARD_CONTEXT, _CARD_WINDOW, text, *m.span())):
            yield m.span()


def _cin_spans(text: str) -> Iterator[tuple[int, int]]:
    for m in _CIN.finditer(text):
        if any(ch.isdigit() for ch in m.group()) and _near(_CIN_CONTEXT, _CIN_WINDOW, text,
                                                           *m.span()):
            yield m.span()


# From the most specific to the least; a span taken by an earlier finder is not looked at again.
_FINDERS: tuple[tuple[str, Finder], ...] = (
    ("iban", _matches(_IBAN, _iban_ok)),
    ("rib", _matches(_RIB, _rib_ok)),
    ("card", _card_spans),
    ("email", _matches(_EMAIL, lambda match: True)),
    ("ip", _matches(_IPV4, _ip_ok)),
    ("ip", _matches(_IPV6, _ip_ok)),
    ("phone", _matches(_PHONE, lambda match: True)),
    ("cin", _cin_spans),
)


def find(text: str) -> list[tuple[int, int, str]]:
    """Every personal-data span in `text` as (start, end, type), in text order, not overlapping."""
    taken: list[tuple[int, int, str]] = []
    for kind, spans in _FINDERS:
        for start, end in spans(text):
            if all(end <= s or start >= e for s, e, _ in taken):
                taken.append((start, end, kind))
    return sorted(taken)


def scrub(text: str) -> tuple[str, dict[str, int]]:
    """`text` with each personal-data span replaced by its placeholder, and the count per type."""
    spans = find(text)
    if not spans:
        return text, {}
    parts: list[str] = []
    at = 0
    for start, end, kind in spans:
        parts.append(text[at:start])
        parts.append(PLACEHOLDERS[kind])
        at = end
    parts.append(text[at:])
    return "".join(parts), dict(Counter(kind for _, _, kind in spans))
