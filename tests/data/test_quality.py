"""pretrain.data.quality: datatrove's rules with words, stop words and thresholds per language."""

from __future__ import annotations

import pytest

from pretrain.config import ConfigError, FilterRules, QualityConfig, load_config
from pretrain.data.quality import QualityFilter, split_words

DARIJA = "\n".join([
    "واش كاين شي واحد عندو الطوموبيل باش يوصلني لمحطة القطار غدا الصباح، راه خاصني نكون تما.",
    "البارح مشيت للسوق ديال الحي وشريت الخضرة والفواكه، الأثمنة ولات غالية بزاف هاد الأيام.",
    "ولكن ماشي مشكل، المهم هو الصحة والعائلة، الله يحفظ الجميع من كل شر.",
])
ARABIZI = "\n".join([
    "wach kayn chi wa7d 3ndo tomobil bach ywsselni l gare ghedda sba7? rah khassni nkoun tma.",
    "lbare7 mchit l souk dyal l7ay o chrit lkhodra, l2atman wlat ghalya bzaf had l2iyam.",
    "walakin machi mochkil, lmohim howa se77a w l3a2ila, lah y7fed kolchi.",
])


def test_words_keep_harakat_clitics_arabizi_digits_and_tifinagh_marks() -> None:
    assert split_words("وَالمَغْرِب") == ["وَالمَغْرِب"]
    assert split_words("3lach 7ta l2atman") == ["3lach", "7ta", "l2atman"]
    assert split_words("ⴰⴳⵯⵍⵍⵉⴷ") == ["ⴰⴳⵯⵍⵍⵉⴷ"]
    assert split_words("ديال، bghit, nmchi! — 3lach?") == ["ديال", "bghit", "nmchi", "—", "3lach"]


def test_darija_pages_pass_their_rules_but_not_english_ones() -> None:
    quality = QualityFilter()
    assert quality.apply(DARIJA, "ary_Arab")[1] is None
    assert quality.apply(ARABIZI, "ary_Latn")[1] is None
    # English rules (50 words, English stop words) would drop both: why rules are per language
    assert quality.apply(DARIJA, "eng_Latn")[1] == "gopher_quality:gopher_short_doc"
    english_rules = QualityConfig(languages={"ary_Latn": FilterRules(min_doc_words=5,
                                                                     stop_words=["the", "of"])})
    assert QualityFilter(english_rules).apply(ARABIZI, "ary_Latn")[1] == \
        "gopher_quality:gopher_enough_stop_words"


def test_repeated_spam_is_removed_with_the_rule_that_caught_it() -> None:
    spam = "\n".join(["Acheter maintenant pas cher promo livraison gratuite"] * 12)
    assert QualityFilter().apply(spam, "fra_Latn")[1] == "gopher_repetition:dup_line_frac"


def test_policy_lines_in_french_and_arabic_are_dropped_and_the_rest_kept() -> None:
    text = DARIJA + "\nجميع الحقوق محفوظة 2024\nCe site utilise des cookies pour mesurer l'audience"
    kept, reason = QualityFilter().apply(text, "ary_Arab")
    assert reason is None and kept == DARIJA


def test_thresholds_come_from_the_config() -> None:
    config = load_config(None, ["quality.languages.ary_Arab.min_doc_words=500"])
    assert config.quality.languages["ary_Arab"].stop_words  # the rest of its rules are kept
    assert QualityFilter(config.quality).apply(DARIJA, "ary_Arab")[1] == \
        "gopher_quality:gopher_short_doc"
    assert QualityFilter(QualityConfig(enabled=False)).apply("x", "ary_Arab") == ("x", None)


def test_a_bad_threshold_names_its_key() -> None:
    with pytest.raises(ConfigError, match=r"quality\.languages\.ary_Arab\.char_dup_ratio"):
        load_config(None, ["quality.languages.ary_Arab.char_dup_ratio=2"])
