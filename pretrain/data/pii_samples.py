"""Synthetic Moroccan personal data and look-alikes, to measure the scrubber (pretrain.data.pii).

`planted(n, seed)` makes sentences in French, MSA, Darija (Arabic script and Arabizi) and
English, each holding one piece of personal data written the way people write it (phone numbers
in every grouping, e-mail addresses, IPv4/IPv6, CIN numbers after their context words, RIBs with a
valid key, IBANs with valid check digits, card numbers with a valid Luhn digit), and says where
it is. `look_alikes(n, seed)` makes sentences with no personal data that a careless scrubber
would hit: prices, dates, years, times, percentages, postal codes, product references, flight
numbers, order and tracking numbers, ISBNs, version numbers, scores, populations, RIB-, IBAN-
and card-shaped numbers whose check fails. Both are deterministic for a seed.

The formats are written from how the data is written (Bank Al-Maghrib's RIB layout, ANRT
numbering, the CNIE), not from the scrubber's patterns, so the measure is not circular.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["LOOK_ALIKE_KINDS", "Planted", "look_alikes", "planted"]


@dataclass(frozen=True)
class Planted:
    text: str
    kind: str   # a pretrain.data.pii type
    start: int  # where the personal data is in text
    end: int


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def _group(digits: str, sizes: list[int], sep: str) -> str:
    parts, at = [], 0
    for size in sizes:
        parts.append(digits[at:at + size])
        at += size
    if at < len(digits):
        parts.append(digits[at:])
    return sep.join(p for p in parts if p)


def _phone(rng: random.Random) -> str:
    first = rng.choice("567")
    rest = _digits(rng, 8)
    national = first + rest                      # 9 digits after the trunk 0 / +212
    style = rng.randrange(11)
    if style == 8:
        return "(+212) " + national
    if style == 9:
        return _group("0" + national, [2, 2, 2, 2, 2], "/")
    if style == 10:
        return _group("0" + national, [4, 3, 3], " ")  # 0661 234 567
    if style == 0:
        return "0" + national
    if style == 1:
        return _group("0" + national, [2, 2, 2, 2, 2], rng.choice([" ", ".", "-"]))
    if style == 2:
        return "+212" + national
    if style == 3:
        return "+212 " + _group(national, [1, 2, 2, 2, 2], rng.choice([" ", "-", "."]))
    if style == 4:
        return "00212 " + _group(national, [3, 3, 3], " ")
    if style == 5:
        return "+212 (0)" + _group(national, [1, 2, 2, 2, 2], " ")
    if style == 6:
        return "+212 " + national[:3] + "-" + national[3:]
    return _group("0" + national, [4, 2, 2, 2], " ")  # 0522 12 34 56, fixed lines


_NAMES = ["ahmed", "fatima", "youssef", "khadija", "omar", "salma", "hamza", "imane", "yassine",
          "nora", "mehdi", "asmae", "anass", "ghizlane", "reda", "zineb", "ayoub", "houda"]
_FAMILY = ["benali", "el.amrani", "alaoui", "bennani", "tazi", "idrissi", "chraibi", "berrada",
           "ait.said", "ouazzani", "el-fassi", "amzil"]
_DOMAINS = ["gmail.com", "yahoo.fr", "hotmail.com", "menara.ma", "um5.ac.ma", "uca.ac.ma",
            "iam.ma", "orange.ma", "entreprise.co.ma", "outlook.fr", "mail.gov.ma"]


def _email(rng: random.Random) -> str:
    local = rng.choice(_NAMES)
    if rng.random() < 0.1:
        local = local.capitalize()
    style = rng.randrange(4)
    if style == 1:
        local += "." + rng.choice(_FAMILY)
    elif style == 2:
        local += _digits(rng, rng.randint(2, 4))
    elif style == 3:
        local += "_" + rng.choice(_FAMILY) + "+news"
    domain = rng.choice(_DOMAINS)
    if rng.random() < 0.1:  # written to dodge address harvesters
        return f"{local} [at] {domain.replace('.', ' [dot] ')}"
    if rng.random() < 0.05:
        return f"{local}(at){domain}"
    return f"{local}@{domain}"


def _ipv4(rng: random.Random) -> str:
    return ".".join(str(rng.randint(1 if i == 0 else 0, 255)) for i in range(4))


def _ipv6(rng: random.Random) -> str:
    groups = [f"{rng.randrange(0x10000):x}" for _ in range(8)]
    if rng.random() < 0.5:
        cut = rng.randint(2, 6)
        return ":".join(groups[:cut]) + "::" + groups[7]
    return ":".join(groups)


_CIN_PREFIXES = ["A", "B", "BE", "BH", "BJ", "BK", "BL", "C", "CB", "CD", "D", "DA", "E", "EE",
                 "F", "FA", "G", "GA", "H", "HA", "I", "IA", "J", "JA", "JB", "K", "L", "LA",
                 "M", "MA", "N", "P", "PA", "Q", "R", "S", "SH", "T", "TA", "U", "V", "W", "X",
                 "Y", "Z", "ZT"]


def _cin(rng: random.Random) -> str:
    prefix, digits = rng.choice(_CIN_PREFIXES), _digits(rng, rng.choice([5, 6, 6, 6]))
    style = rng.randrange(6)
    if style == 0:
        return prefix.lower() + digits
    if style == 1:
        return prefix + " " + digits
    return prefix + digits


def _rib_digits(rng: random.Random) -> str:
    body = rng.choice(["007", "011", "013", "022", "145", "190", "225", "230"]) \
        + _digits(rng, 3) + _digits(rng, 16)
    key = 97 - (int(body) * 100) % 97
    return body + f"{key:02d}"


def _rib(rng: random.Random) -> str:
    digits = _rib_digits(rng)
    style = rng.randrange(4)
    if style == 0:
        return digits
    if style == 1:
        return _group(digits, [3, 3, 16, 2], " ")
    if style == 2:
        return _group(digits, [3, 3, 16, 2], "-")
    return _group(digits, [4] * 6, " ")


def _iban_check(rib: str) -> str:
    numeric = rib + "2210" + "00"  # M=22, A=10, check digits 00 moved to the end
    return f"{98 - int(numeric) % 97:02d}"


def _iban(rng: random.Random) -> str:
    rib = _rib_digits(rng)
    compact = "MA" + _iban_check(rib) + rib
    return compact if rng.random() < 0.3 else _group(compact, [4] * 7, " ")


def _luhn_digit(partial: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(partial)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return str((10 - total % 10) % 10)


def _card(rng: random.Random) -> tuple[str, bool]:
    """A card number and whether it is written as one run (which needs a context word)."""
    network = rng.randrange(3)
    if network == 0:
        partial = "4" + _digits(rng, 14)
    elif network == 1:
        partial = "5" + rng.choice("12345") + _digits(rng, 13)
    else:
        partial = rng.choice(["34", "37"]) + _digits(rng, 12)
    number = partial + _luhn_digit(partial)
    style = rng.randrange(3)
    if style == 0:
        return number, True
    sep = rng.choice([" ", "-"])
    sizes = [4, 6, 5] if len(number) == 15 else [4, 4, 4, 4]
    return _group(number, sizes, sep), False


# Sentence frames per type: {} is the personal data. Several languages each.
_FRAMES: dict[str, list[str]] = {
    "phone": ["Appelez-moi au {} après 18h.", "Pour plus d'infos: {}", "اتصل بنا على الرقم {}",
              "عيط ليا ف {} إلا بغيتي شي حاجة", "3ayet lia f {} ila bghiti chi 7aja",
              "whatsapp {} merci", "Tél : {} / fax inconnu", "Call me at {} tomorrow.",
              "رقم الهاتف: {}.", "sifet lia msg l {} 3afak"],
    "email": ["Écrivez à {} pour candidater.", "راسلني على {}", "contact: {}",
              "sift lia l cv f {}", "Send it to {}.", "البريد الإلكتروني: {}"],
    "ip": ["Connexion depuis l'adresse {} refusée.", "tla3 lia had l'ip {} f logs",
           "server at {} is down", "عنوان IP: {}"],
    "cin": ["CIN: {}", "N° CIN {} délivrée à Rabat", "carte nationale n° {}",
            "Je soussigné, titulaire de la carte d'identité nationale {}, ...",
            "رقم البطاقة الوطنية {}", "لاكارط ديالي {} ضاعت ليا", "CNIE {} valable jusqu'en 2031",
            "ra9m la carte nationale dyali {}", "ب.ت.و رقم {}", "البطاقة الوطنية للتعريف رقم: {}"],
    "rib": ["RIB : {}", "Virement sur le RIB {} svp.", "رقم الحساب البنكي (RIB): {}",
            "sift lia l flous l had rib {}", "Mon RIB est {}, merci."],
    "iban": ["IBAN : {}", "Veuillez virer sur {} avant vendredi.", "الآيبان ديالي {}",
             "IBAN {} BIC BCMAMAMC"],
    "card": ["Ma carte {} a été débitée deux fois.", "رقم البطاقة البنكية {}",
             "paid with card {} yesterday", "numéro de carte visa : {}",
             "الكارط ديالي {} تبلوكات", "{} exp 12/27"],
}
_MAKERS = {"phone": _phone, "email": _email, "cin": _cin, "rib": _rib, "iban": _iban}


def _value(kind: str, rng: random.Random) -> tuple[str, bool]:
    if kind == "card":
        return _card(rng)
    if kind == "ip":
        return (_ipv4(rng) if rng.random() < 0.6 else _ipv6(rng)), False
    return _MAKERS[kind](rng), False


def planted(n: int, seed: int = 0) -> list[Planted]:
    """n sentences, each with one piece of personal data; the types in turn."""
    rng = random.Random(seed)
    kinds = list(_FRAMES)
    out: list[Planted] = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        value, one_run = _value(kind, rng)
        frames = _FRAMES[kind]
        if kind == "card" and one_run:  # a bare run of digits is a card only next to a card word
            frames = [f for f in frames if not f.startswith("{}")]
        frame = rng.choice(frames)
        start = frame.index("{}")
        out.append(Planted(frame.replace("{}", value), kind, start, start + len(value)))
    return out


def _failing_rib(rng: random.Random) -> str:
    digits = _rib_digits(rng)
    key = (int(digits[-2:]) + rng.randint(1, 96)) % 97
    return digits[:-2] + f"{key:02d}"


def _failing_card(rng: random.Random) -> str:
    number, _ = _card(rng)
    digits = number.replace(" ", "").replace("-", "")
    wrong = str((int(digits[-1]) + rng.randint(1, 9)) % 10)
    return _group(digits[:-1] + wrong, [4, 4, 4, 4], " ")


def _failing_iban(rng: random.Random) -> str:
    rib = _failing_rib(rng)  # else the digits after MA.. are still a valid RIB: personal data
    check = f"{(int(_iban_check(rib)) + rng.randint(1, 50)) % 100:02d}"
    return _group("MA" + check + rib, [4] * 7, " ")


# The kinds of look-alike, in the order look_alikes makes them.
LOOK_ALIKE_KINDS = (
    "price_fr", "price_ar", "price_arabizi", "amount", "date_slash", "date_iso", "date_time",
    "population", "year_ar", "percentage", "postal_code", "product_ref", "sku", "model_code",
    "flight", "order_number_16", "tracking_number", "reference_24", "isbn", "version", "score",
    "grouped_count", "count_10_digits", "rib_bad_key", "iban_bad_check", "card_bad_luhn",
    "law_article", "constitution_article", "dahir_number", "time", "decimal", "highway_km",
)


def look_alikes(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """n (kind, sentence) pairs: numbers, codes and dates but no personal data."""
    rng = random.Random(seed)
    r = rng.randint

    def d(k: int) -> str:
        return _digits(rng, k)

    def day() -> str:
        return f"{r(1, 28):02d}"

    def month() -> str:
        return f"{r(1, 12):02d}"

    makers = [
        lambda: f"Le prix est de {r(1, 999)} {r(100, 999)} {r(100, 999)} DH.",
        lambda: f"الثمن {r(10, 9999)},{r(10, 99)} درهم فقط",
        lambda: f"b {r(5, 900)} dh l kilo",
        lambda: f"Montant: {r(1, 99)}.{r(100, 999)},{r(10, 99)} MAD",
        lambda: f"Rendez-vous le {day()}/{month()}/{r(1990, 2030)}.",
        lambda: f"بتاريخ {r(1990, 2030)}-{month()}-{day()}",
        lambda: f"le {day()}.{month()}.{r(1990, 2030)} à {r(0, 23):02d}:{r(10, 59)}:{r(10, 59)}",
        lambda: (f"entre {r(1950, 2000)} et {r(2001, 2030)}, la population est passée de "
                 f"{r(10, 40)} {r(100, 999)} {r(100, 999)} habitants"),
        lambda: f"سنة {r(1900, 2030)} كانت صعيبة",
        lambda: f"Le taux est de {r(0, 99)},{r(0, 9)} % en {r(2000, 2030)}.",
        lambda: f"code postal {rng.choice(['10', '20', '30', '40', '80', '90'])}{r(0, 999):03d}",
        lambda: f"Réf. {rng.choice(_CIN_PREFIXES)}{d(6)} en stock",
        lambda: f"SKU {rng.choice('XYZQ')}{d(7)} - livraison gratuite",
        lambda: f"modèle {rng.choice(_CIN_PREFIXES)}-{d(4)} disponible",
        lambda: f"vol AT{r(100, 999)} Casablanca - Paris",
        lambda: f"commande n° {d(16)} expédiée",
        lambda: f"numéro de suivi {d(13)}MA",
        lambda: f"référence dossier {d(24)}",
        lambda: f"ISBN 978-{r(1, 9)}-{d(3)}-{d(5)}-{r(0, 9)}",
        lambda: f"version {r(0, 9)}.{r(0, 20)}.{r(0, 30)} disponible",
        lambda: f"score final {r(0, 5)}-{r(0, 5)} à la {r(1, 90)}e minute",
        lambda: f"statistiques: {d(3)} {d(3)} {d(3)} vues",
        lambda: f"{r(10**9, 10**10 - 1)} visites cette année",
        lambda: f"RIB-like {_failing_rib(rng)} (clé invalide)",
        lambda: f"IBAN invalide {_failing_iban(rng)}",
        lambda: f"{_failing_card(rng)} n'est pas une carte valide",
        lambda: f"l'article {r(1, 600)} du code pénal, alinéa {r(1, 9)}",
        lambda: f"الفصل {r(1, 180)} من الدستور",
        lambda: f"Dahir n° 1-{r(58, 99):02d}-{d(3)} du {r(1, 28)} mai",
        lambda: f"heure: {r(0, 23):02d}:{r(0, 59):02d}",
        lambda: f"0{r(1, 9)},{d(8)} est le coefficient",
        lambda: f"km {r(100, 999)}+{r(100, 999)} de l'autoroute A{r(1, 7)}",
    ]
    assert len(makers) == len(LOOK_ALIKE_KINDS)
    return [(LOOK_ALIKE_KINDS[i % len(makers)], makers[i % len(makers)]()) for i in range(n)]
