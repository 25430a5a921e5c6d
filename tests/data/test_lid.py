"""pretrain.data.lid: script detection, per-script fastText models, code-switching, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pretrain.config import LidConfig
from pretrain.data.lid import (
    MIXED,
    UNDETERMINED,
    Identifier,
    LidError,
    evaluate,
    identify,
    read_labelled,
    script_shares,
    train,
)
from pretrain.fileio import sha256_file
from tests.paths import SHARED_DATA

LID_EVAL = SHARED_DATA / "lid-eval" / "lid_eval_dev.jsonl"
TARGETS = ["arb_Arab", "ary_Arab", "ary_Latn", "fra_Latn", "eng_Latn", "zgh_Tfng", "tzm_Latn"]

# Written for these tests (not in the sample corpus the bundled model was trained on).
FRESH = [
    ("ary_Arab", "واش كاين شي واحد عندو الطوموبيل باش يوصلني لمحطة القطار غدا الصباح؟"),
    ("arb_Arab", "أعلنت الحكومة اليوم عن خطة جديدة لدعم الفلاحين المتضررين من الجفاف "
                 "في المناطق الجنوبية."),
    ("ary_Latn", "wach kayn chi wa7d 3ndo tomobil bach ywsselni l gare ghedda sba7?"),
    ("fra_Latn", "Le gouvernement a annoncé aujourd'hui un nouveau plan pour soutenir les "
                 "agriculteurs."),
    ("eng_Latn", "The government announced a new plan today to support farmers hit by the "
                 "drought."),
    ("zgh_Tfng", "ⴰⵎⴰⵣⵉⵖ ⵉⵜⵜⴰⵡⵉ ⵜⴰⵎⴰⵣⵉⵖⵜ ⵖⵔ ⵜⵉⵏⵎⵍ ⴰⴷ ⵜⵍⵎⴷ ⵜⴰⵔⵡⴰ ⵏⵏⵙ"),
]


def test_script_shares_count_letters_only() -> None:
    assert script_shares("3lach ma jitich lbare7?") == {"Latn": 1.0}  # Arabizi digits: no letters
    assert next(iter(script_shares("ⴰⵣⵓⵍ ⴼⵍⵍⴰⵡⵏ"))) == "Tfng"
    mixed = script_shares("bonjour صاحبي")
    assert set(mixed) == {"Latn", "Arab"} and abs(sum(mixed.values()) - 1) < 1e-9
    assert script_shares("12345 !!! 😀") == {}
    assert next(iter(script_shares("Привет мир"))) == "other"


def test_bundled_model_identifies_fresh_sentences() -> None:
    results = identify([text for _, text in FRESH])
    assert [label for label, _ in results] == [label for label, _ in FRESH]
    assert all(0 < confidence <= 1 for _, confidence in results)


def test_no_letters_and_unknown_scripts_are_undetermined_with_a_reason() -> None:
    identifier = Identifier()
    assert identifier.identify_one("2024-05-12 !!! 1234").reason == "no_letters"
    cyrillic = identifier.identify_one("Это предложение написано по-русски.")
    assert (cyrillic.label, cyrillic.reason) == (UNDETERMINED, "unknown_script")


def test_code_switching_gives_shares_and_a_mixed_outcome() -> None:
    text = ("الحكومة أعلنت على خطة جديدة لدعم الفلاحين ديال الجنوب. "
            "Le ministre a expliqué les détails du programme aux journalistes hier soir.")
    result = Identifier().identify_one(text)
    assert result.label == MIXED, result
    assert set(result.shares) >= {"fra_Latn"} and len(result.shares) >= 2
    assert abs(sum(result.shares.values()) - 1) < 1e-3
    # With a lower bar for "main", the same text has a main language with its share
    relaxed = Identifier(LidConfig(mixed_below=0.3)).identify_one(text)
    assert relaxed.label in relaxed.shares and relaxed.confidence <= relaxed.shares[relaxed.label]


def test_per_language_thresholds_turn_low_confidence_into_und() -> None:
    text = FRESH[0][1]
    strict = Identifier(LidConfig(min_confidence={"ary_Arab": 1.0})).identify_one(text)
    assert (strict.label, strict.reason) == (UNDETERMINED, "low_confidence")
    assert strict.confidence > 0  # the confidence is still reported


def _toy_rows() -> list[tuple[str, str]]:
    darija = ["kanbghi nmchi l souk", "wach nta mzyan", "3lach ma jitich", "bghit nchri lkhobz",
              "fin kayn tobis", "daba ghadi nji"]
    french = ["je vais au marché", "est-ce que tu vas bien", "pourquoi tu es venu",
              "je veux acheter du pain", "où est le bus", "je viens maintenant"]
    tifinagh = ["ⴰⵣⵓⵍ ⴼⵍⵍⴰⵡⵏ", "ⵜⴰⵏⵎⵎⵉⵔⵜ"]
    return ([("ary_Latn", t) for t in darija * 5] + [("fra_Latn", t) for t in french * 5]
            + [("zgh_Tfng", t) for t in tifinagh] + [("zgh_Tfng", "azul fellawen")])


SMALL = {"bucket": 20_000, "dim": 16, "epoch": 25}  # a toy model trains in a second


def test_train_writes_a_deterministic_model_folder(tmp_path: Path) -> None:
    first = train(_toy_rows(), tmp_path / "a", sources={"toy": "0" * 64}, params=SMALL)
    second = train(_toy_rows(), tmp_path / "b", params=SMALL)
    assert first["models"] == {"Latn": "Latn.ftz"} and first["constant"] == {"Tfng": "zgh_Tfng"}
    assert first["skipped"] == {"script_differs_from_label": 1}  # zgh_Tfng on Latin letters
    assert first["sha256"] == second["sha256"]  # one thread and a seed: the same bytes
    assert sha256_file(tmp_path / "a" / "Latn.ftz") == first["sha256"]["Latn.ftz"]
    identifier = Identifier(LidConfig(model=str(tmp_path / "a")))
    assert identifier.labels == {"ary_Latn", "fra_Latn", "zgh_Tfng"}
    assert identifier.identify(["wach nta mzyan", "ⴰⵣⵓⵍ"])[1] == ("zgh_Tfng", 1.0)


def test_a_damaged_model_folder_is_refused(tmp_path: Path) -> None:
    train(_toy_rows(), tmp_path, params=SMALL)
    with open(tmp_path / "Latn.ftz", "r+b") as f:
        f.seek(200)
        f.write(b"\xff\xfe")
    with pytest.raises(LidError, match="sha256 differs"):
        Identifier(LidConfig(model=str(tmp_path)))


def test_a_file_that_is_not_a_model_is_one_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "model_v3.bin"
    junk.write_bytes(b"this is not a fastText model" * 10)
    with pytest.raises(LidError, match="not a fastText model"):
        Identifier(LidConfig(model=str(junk)))
    with pytest.raises(LidError, match="no such language-ID model"):
        Identifier(LidConfig(model=str(tmp_path / "missing.bin")))
    (tmp_path / "folder").mkdir()
    with pytest.raises(LidError, match="not a language-ID model folder"):
        Identifier(LidConfig(model=str(tmp_path / "folder")))


def test_a_single_model_for_every_script_with_a_label_map(tmp_path: Path) -> None:
    """GlotLID's layout: one .bin, labels like __label__ary_Latn, renamed by lid.label_map."""
    import fasttext

    data = tmp_path / "train.txt"
    data.write_text("".join(f"__label__{'moroccan' if lab == 'ary_Latn' else lab} {text}\n"
                            for lab, text in _toy_rows()), encoding="utf-8")
    model = fasttext.train_supervised(input=str(data), minn=2, maxn=4, verbose=0, thread=1,
                                      seed=1, **SMALL)
    model.save_model(str(tmp_path / "one.bin"))
    config = LidConfig(model=str(tmp_path / "one.bin"), label_map={"moroccan": "ary_Latn"})
    assert Identifier(config).identify(["wach nta mzyan bghit nmchi"])[0][0] == "ary_Latn"
    bad = LidConfig(model=str(tmp_path / "one.bin"), label_map={"arz_Arab": "ara_other"})
    with pytest.raises(LidError, match="label_map names 'arz_Arab'"):
        Identifier(bad)


def test_read_labelled_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "labelled.jsonl"
    path.write_text('{"text": "salam", "lang": "ary_Latn"}\n{"text": "x"}\n', encoding="utf-8")
    with pytest.raises(LidError, match=r"labelled.jsonl:2: not a JSON object"):
        read_labelled([path])


def test_evaluate_counts_precision_recall_and_f1() -> None:
    identifier = Identifier()
    rows = [("fra_Latn", FRESH[3][1]), ("eng_Latn", FRESH[4][1]), ("kab_Latn", FRESH[3][1])]
    scores = evaluate(identifier, rows, ["fra_Latn", "eng_Latn"])
    assert scores.per_label["fra_Latn"]["precision"] == 0.5  # the kab line counts against it
    assert scores.per_label["fra_Latn"]["recall"] == 1.0
    only = evaluate(identifier, rows, ["fra_Latn", "eng_Latn"], only_labels=True)
    assert only.per_label["fra_Latn"]["f1"] == 1.0 and only.lines == 2


@pytest.mark.skipif(not LID_EVAL.exists(), reason=f"{LID_EVAL} is absent (optional shared data)")
def test_bundled_model_on_held_out_real_text_does_not_fall_below_its_measure() -> None:
    """The floor under today's measure (bench/lid.py has the full table): macro F1 0.91 over
    the target languages' lines of lid_eval_dev; evaluation only, never trained or tuned on."""
    rows = [(json.loads(line)["lang"], json.loads(line)["text"])
            for line in LID_EVAL.read_text(encoding="utf-8").splitlines()]
    scores = evaluate(Identifier(), rows, TARGETS, only_labels=True)
    assert scores.macro_f1 >= 0.90, scores.per_label
    for label in ("fra_Latn", "eng_Latn", "zgh_Tfng", "ary_Latn"):
        assert scores.per_label[label]["f1"] >= 0.95, (label, scores.per_label[label])


@pytest.mark.e2e
def test_lid_commands_train_eval_identify_and_refuse_a_bad_model(tmp_path: Path) -> None:
    from tests.cli_runs import ok, pretrain

    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text("".join(json.dumps({"text": text, "lang": lang}) + "\n"
                                for lang, text in _toy_rows()), encoding="utf-8")
    tifinagh = tmp_path / "tfng.txt"
    tifinagh.write_text("ⴰⵣⵓⵍ ⴼⵍⵍⴰⵡⵏ\nⵜⴰⵏⵎⵎⵉⵔⵜ\n", encoding="utf-8")
    ok(pretrain("lid", "train", "--output", "model", "--data", str(labelled),
                "--text", f"zgh_Tfng={tifinagh}", cwd=tmp_path))
    record = json.loads((tmp_path / "model" / "lid.json").read_text(encoding="utf-8"))
    assert record["sources"][str(labelled)] == sha256_file(labelled)
    scores = ok(pretrain("lid", "eval", "--data", str(labelled), "--json", "scores.json",
                         "lid.model=model", cwd=tmp_path))
    assert "macro F1" in scores.stdout
    assert json.loads((tmp_path / "scores.json").read_text())["lines"] == len(_toy_rows())
    (tmp_path / "in.txt").write_text("wach nta mzyan\n\nⴰⵣⵓⵍ\n", encoding="utf-8")
    out = ok(pretrain("lid", "identify", "--input", "in.txt", "lid.model=model", cwd=tmp_path))
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [line["label"] for line in lines] == ["ary_Latn", "zgh_Tfng"]

    (tmp_path / "junk.bin").write_bytes(b"not a model")
    bad = pretrain("lid", "identify", "--input", "in.txt", "lid.model=junk.bin", cwd=tmp_path)
    assert bad.returncode == 2 and "junk.bin: not a fastText model" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
