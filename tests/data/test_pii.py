"""pretrain.data.pii: Moroccan personal data found and replaced, look-alikes left alone."""

from __future__ import annotations

import pytest

from pretrain.data.pii import PLACEHOLDERS, find, scrub
from pretrain.data.pii_samples import look_alikes, planted


@pytest.mark.parametrize("text, kind", [
    ("Appelez le 06 12 34 56 78 ce soir", "phone"),
    ("tel: +212 6 61 23 45 67", "phone"),
    ("00212 522 123 456", "phone"),
    ("+212 (0)5 22 12 34 56", "phone"),
    ("عيط ليا ف 0661234567", "phone"),
    ("عيط ليا ف ٠٦٦١٢٣٤٥٦٧", "phone"),                  # Arabic-Indic digits
    ("3ayet lia f 0661234567 3afak", "phone"),          # Arabizi digits after it are a word
    ("écrire à salma.tazi+cv@um5.ac.ma.", "email"),
    ("from 196.200.131.7 at night", "ip"),
    ("addr 2001:db8:85a3::8a2e:370:7334 up", "ip"),
    ("N° CIN: BE123456", "cin"),
    ("رقم البطاقة الوطنية ديالي K123456", "cin"),
    ("lakart dyali JA12345 tla3at", "cin"),
    ("RIB 011 780 0000123456789012 96", "rib"),
    ("IBAN MA64 0117 8000 0012 3456 7890 1296", "iban"),
    ("carte 4111 1111 1111 1111 bloquée", "card"),
    ("ma carte visa 5555555555554444", "card"),
])
def test_each_type_is_found_and_replaced(text: str, kind: str) -> None:
    out, counts = scrub(text)
    assert counts == {kind: 1}, (text, find(text))
    assert PLACEHOLDERS[kind] in out


def test_the_rib_key_and_iban_check_are_verified() -> None:
    # 24 digits with a wrong key, an IBAN whose check digits are wrong: not personal data by shape
    assert scrub("dossier 011 780 0000123456789012 22")[1] == {}
    iban_wrong = "MA65 0117 8000 0012 3456 7890 1296"
    assert "iban" not in scrub(iban_wrong)[1]


def test_context_decides_for_cin_and_bare_card_numbers() -> None:
    assert scrub("Réf. BE123456 en stock")[1] == {}        # a product code, no ID card words
    assert scrub("commande 4111111111111111 expédiée")[1] == {}  # one run, no card word
    assert scrub("carte 4111111111111111")[1] == {"card": 1}


def test_a_number_inside_a_longer_number_is_not_taken() -> None:
    # the first 16 digits of a grouped 24-digit number are Luhn-valid with a Visa prefix
    digits = "4111 1111 1111 1111 2222 3333"
    assert "card" not in scrub(f"numéro {digits}")[1]


def test_counts_add_up_and_text_outside_is_kept() -> None:
    text = "Salam, 06 11 22 33 44 wla 0522-12-34-56, mail a.b@menara.ma. Merci!"
    out, counts = scrub(text)
    assert counts == {"phone": 2, "email": 1}
    assert out == "Salam, <PHONE> wla <PHONE>, mail <EMAIL>. Merci!"
    assert scrub(out) == (out, {})  # placeholders are not scrubbed again


def test_recall_on_synthetic_moroccan_pii_is_at_least_99_percent() -> None:
    samples = planted(1400, seed=11)
    found = sum(any(kind == p.kind and s <= p.start and e >= p.end for s, e, kind in find(p.text))
                for p in samples)
    assert found / len(samples) >= 0.99


def test_false_positives_on_look_alikes_are_at_most_1_percent() -> None:
    texts = look_alikes(1600, seed=12)
    hit = sum(bool(find(t)) for _, t in texts)
    assert hit / len(texts) <= 0.01
