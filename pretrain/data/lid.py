"""Language identification for Moroccan text: script first, then a fastText classifier per script.

1. Script: every letter is Arabic, Latin, Tifinagh or other (Unicode blocks); the script with
   most letters decides which classifier reads the text. Digits are not letters, so Arabizi
   ("3lach ma jitich") is Latin script.
2. A fastText model per script (the `fasttext` package, character n-grams): Arabic script tells
   `arb_Arab` (MSA) from `ary_Arab` (Darija) and whatever other labels its training data has;
   Latin tells `ary_Latn` (Arabizi), `fra_Latn`, `eng_Latn`, `tzm_Latn`, ...; a script with one
   label in the training data (Tifinagh: `zgh_Tfng`) needs no model.
3. Code-switching: the text is cut into sentences (short ones join their neighbour) and at
   every change of script; each piece is identified, and a language's share is the fraction of
   letters in the pieces given to it. The main language is the one with the largest share; its
   confidence is the letter-weighted probability the models gave it (so at most its share).
   The outcome is `mixed` when no language holds `lid.mixed_below` while another holds
   `lid.min_share`, `und` when there are no letters, the script has no model, or the
   confidence is under the language's threshold (`lid.min_confidence`).

The model is a folder written by `train` (lid.json + `<script>.ftz`); `pretrain lid train`
makes one from labelled jsonl (`{"text", "lang"}`). The package bundles one
(pretrain/data/lid_model/, see its lid.json for what it was trained on: the sample corpus and
the public-domain UDHR). A single fastText model for every script (GlotLID's model_v3.bin) can
be named instead, with `lid.label_map` renaming its labels. Nothing is ever downloaded.

`identify(texts)` gives (label, confidence) per text; `Identifier.identify_one` the whole
record (shares, script).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from pretrain.config import LidConfig
from pretrain.errors import InputError
from pretrain.fileio import atomic_write_text, sha256_file

__all__ = ["MIXED", "SCRIPTS", "UNDETERMINED", "Identification", "Identifier", "LidError",
           "bundled_model_dir", "evaluate", "identify", "read_labelled", "script_shares",
           "train"]

log = logging.getLogger(__name__)

SCRIPTS = ("Arab", "Latn", "Tfng")
MIXED = "mixed"
UNDETERMINED = "und"
MODEL_FORMAT = 1


class LidError(InputError):
    """A model, label map or labelled file that cannot be used; the message says which."""


@cache  # a text has few distinct characters; this runs for every one
def _script_of(ch: str) -> str | None:
    """The script of one letter; None for what is not a letter (digits, marks, punctuation)."""
    if not ch.isalpha():
        return None
    o = ord(ch)
    if 0x0600 <= o <= 0x06FF or 0x0750 <= o <= 0x077F or 0x08A0 <= o <= 0x08FF \
            or 0xFB50 <= o <= 0xFDFF or 0xFE70 <= o <= 0xFEFF:
        return "Arab"
    if 0x2D30 <= o <= 0x2D7F:
        return "Tfng"
    if o < 0x250 or 0x1E00 <= o <= 0x1EFF or unicodedata.name(ch, "").startswith("LATIN"):
        return "Latn"
    return "other"


def script_shares(text: str) -> dict[str, float]:
    """The share of the text's letters in each script (Arab, Latn, Tfng, other); {} if none."""
    counts = Counter(s for s in map(_script_of, text) if s is not None)
    total = sum(counts.values())
    return {script: n / total for script, n in counts.most_common()} if total else {}


def _features(text: str) -> str:
    """What the classifier reads: one lower-cased line (fastText reads one line at a time)."""
    return " ".join(text.lower().split())


@dataclass
class Identification:
    label: str          # a language, MIXED or UNDETERMINED
    confidence: float   # 0..1
    script: str         # the main script, or "" without letters
    shares: dict[str, float] = field(default_factory=dict)  # language -> share of letters
    reason: str = ""    # why UNDETERMINED: no_letters, unknown_script, low_confidence


_SENTENCE_END = re.compile(r"(?<=[.!?؟؛…\n])\s+|\n+")


class Identifier:
    """Loaded models and the thresholds of a LidConfig."""

    def __init__(self, config: LidConfig | None = None) -> None:
        self.config = config or LidConfig()
        self._models, self._constant, self.description = _load(self.config)

    @property
    def labels(self) -> set[str]:
        out = set(self._constant.values())
        for model, rename in self._models.values():
            out.update(rename(label) for label in model.get_labels())
        return out

    def _predict(self, script: str, text: str) -> tuple[str, float] | None:
        if script in self._constant:
            return self._constant[script], 1.0
        entry = self._models.get(script) or self._models.get("*")
        if entry is None:
            return None
        model, rename = entry
        labels, probs = model.predict(_features(text), k=1)
        if not labels:
            return None
        return rename(labels[0]), min(1.0, float(probs[0]))

    def _pieces(self, text: str) -> list[tuple[str, str, int]]:
        """(piece, script, letters): sentences, cut again where the script changes."""
        pieces: list[tuple[str, str, int]] = []
        for sentence in _SENTENCE_END.split(text):
            run: list[str] = []
            run_script = ""
            for word in sentence.split():
                script = next((s for s in map(_script_of, word) if s is not None), run_script)
                if run and script != run_script and run_script:
                    pieces.append(self._piece(" ".join(run), run_script))
                    run = []
                run.append(word)
                run_script = script or run_script
            if run and run_script:
                pieces.append(self._piece(" ".join(run), run_script))
        return self._join_short(pieces)

    @staticmethod
    def _piece(text: str, script: str) -> tuple[str, str, int]:
        return text, script, sum(_script_of(ch) is not None for ch in text)

    def _join_short(self, pieces: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
        out: list[tuple[str, str, int]] = []
        for text, script, letters in pieces:
            if out and out[-1][1] == script and (letters < self.config.min_segment_letters
                                                 or out[-1][2] < self.config.min_segment_letters):
                prev = out.pop()
                out.append((prev[0] + " " + text, script, prev[2] + letters))
            else:
                out.append((text, script, letters))
        return out

    def identify_one(self, text: str) -> Identification:
        shares = script_shares(text)
        if not shares:
            return Identification(UNDETERMINED, 0.0, "", reason="no_letters")
        main_script = next(iter(shares))
        if main_script == "other" or self._predict(main_script, text) is None:
            return Identification(UNDETERMINED, 0.0, main_script, reason="unknown_script")
        letter_share: dict[str, float] = defaultdict(float)
        weighted_prob: dict[str, float] = defaultdict(float)
        total = 0
        for piece, script, letters in self._pieces(text):
            guess = self._predict(script, piece) if script != "other" else None
            label, prob = guess if guess else (UNDETERMINED, 0.0)
            letter_share[label] += letters
            weighted_prob[label] += letters * prob
            total += letters
        if total == 0:  # every letter was in a piece of its own script but none classified
            return Identification(UNDETERMINED, 0.0, main_script, reason="unknown_script")
        ranked = sorted(letter_share, key=lambda lab: (-letter_share[lab], lab))
        shares_out = {lab: round(letter_share[lab] / total, 4) for lab in ranked}
        main = ranked[0]
        confidence = weighted_prob[main] / total
        second = shares_out[ranked[1]] if len(ranked) > 1 else 0.0
        if shares_out[main] < self.config.mixed_below and second >= self.config.min_share:
            return Identification(MIXED, shares_out[main], main_script, shares_out)
        if main == UNDETERMINED:
            return Identification(UNDETERMINED, 0.0, main_script, shares_out, "unknown_script")
        threshold = self.config.min_confidence.get(main, self.config.default_min_confidence)
        if confidence < threshold:
            return Identification(UNDETERMINED, confidence, main_script, shares_out,
                                  "low_confidence")
        return Identification(main, round(confidence, 4), main_script, shares_out)

    def identify(self, texts: Iterable[str]) -> list[tuple[str, float]]:
        return [(r.label, r.confidence) for r in map(self.identify_one, texts)]


@lru_cache(maxsize=4)
def _default_identifier() -> Identifier:
    return Identifier()


def identify(texts: list[str], config: LidConfig | None = None) -> list[tuple[str, float]]:
    """(label, confidence) for each text: a language such as `ary_Arab`, `mixed` or `und`."""
    identifier = _default_identifier() if config is None else Identifier(config)
    return identifier.identify(texts)


# --- models on disk ----------------------------------------------------------------------------

def bundled_model_dir() -> Path:
    return Path(str(resources.files("pretrain") / "data" / "lid_model"))


def _fasttext() -> Any:
    import fasttext
    fasttext.FastText.eprint = lambda *args, **kwargs: None  # its load_model warning on stderr
    return fasttext


def _load_fasttext(path: Path) -> Any:
    if not path.is_file():
        raise LidError(f"{path}: no such language-ID model file; check lid.model")
    try:
        return _fasttext().load_model(str(path))
    except (ValueError, RuntimeError, MemoryError) as error:
        raise LidError(f"{path}: not a fastText model ({error}); name a .bin or .ftz written "
                       "by fastText, or a folder written by `pretrain lid train`") from None


def _renamer(label_map: dict[str, str]) -> Any:
    """fastText's `__label__ary_Latn` as ours; the map's keys may be given with or without
    fastText's prefix."""
    def rename(label: str) -> str:
        bare = label.removeprefix("__label__")
        return label_map.get(label, label_map.get(bare, bare))
    return rename


def _load(config: LidConfig) -> tuple[dict[str, tuple[Any, Any]], dict[str, str], dict[str, Any]]:
    """(models by script, constant labels by script, the model's description)."""
    path = Path(config.model) if config.model else bundled_model_dir()
    if path.is_dir():
        record_path = path / "lid.json"
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise LidError(f"{record_path}: not a language-ID model folder ({error}); "
                           "write one with `pretrain lid train`") from None
        if record.get("format") != MODEL_FORMAT:
            raise LidError(f"{record_path}: format {record.get('format')!r}, this version reads "
                           f"{MODEL_FORMAT}; retrain with `pretrain lid train`")
        models = {}
        for script, file in record["models"].items():
            model = _load_fasttext(path / file)
            _check_sha(path / file, record["sha256"][file])
            models[script] = (model, _renamer(config.label_map))
        _check_label_map(config, models, path)
        return models, dict(record["constant"]), record
    model = _load_fasttext(path)
    models = {"*": (model, _renamer(config.label_map))}
    _check_label_map(config, models, path)
    return models, {}, {"model": str(path), "labels": len(model.get_labels())}


def _check_sha(path: Path, expected: str) -> None:
    if sha256_file(path) != expected:
        raise LidError(f"{path}: its sha256 differs from the one lid.json recorded; the model "
                       "file was changed or damaged: retrain with `pretrain lid train`")


def _check_label_map(config: LidConfig, models: dict[str, tuple[Any, Any]], path: Path) -> None:
    known = {label for model, _ in models.values() for label in model.get_labels()}
    for label in config.label_map:
        if label not in known and f"__label__{label}" not in known:
            close = sorted(known)[:5]
            raise LidError(f"lid.label_map names '{label}', which the model {path} does not "
                           f"have (its labels look like {close}); fix the map")


# --- training and evaluation ---------------------------------------------------------------------

def read_labelled(paths: Sequence[str | Path], label_field: str = "lang") -> list[tuple[str, str]]:
    """(label, text) pairs from jsonl files; a bad line is one LidError naming file and line."""
    rows = []
    for path in map(Path, paths):
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise LidError(f"{path}: cannot read the labelled file ({error})") from None
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                text, label = record["text"], record[label_field]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise LidError(f"{path}:{number}: not a JSON object with 'text' and "
                               f"'{label_field}' ({error})") from None
            if not isinstance(text, str) or not isinstance(label, str) \
                    or not re.fullmatch(r"[A-Za-z0-9_\-]+", label):
                raise LidError(f"{path}:{number}: 'text' must be a string and "
                               f"'{label_field}' a label of letters, digits, _ or -")
            rows.append((label, text))
    return rows


# Character n-grams carry the signal (Darija and MSA share most words but not their affixes).
TRAIN_PARAMS: dict[str, Any] = {"dim": 32, "epoch": 40, "lr": 0.5, "minn": 2, "maxn": 5,
                                "wordNgrams": 2, "bucket": 200_000, "loss": "softmax",
                                "thread": 1, "seed": 1}


def train(rows: Sequence[tuple[str, str]], out_dir: Path, sources: dict[str, str] | None = None,
          params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train one model per script from (label, text) rows; write out_dir/lid.json + models.

    Each row goes to the model of its text's main script; a row whose label names another
    script (`zgh_Tfng` on a line of Latin letters) is left out and counted. A script whose rows
    all carry one label gets no model (that label, confidence 1). `sources` (name -> sha256 of
    the file) is recorded in lid.json. Deterministic (one thread, a seed).
    """
    settings = {**TRAIN_PARAMS, **(params or {})}
    by_script: dict[str, list[tuple[str, str]]] = defaultdict(list)
    skipped: Counter[str] = Counter()
    for label, text in rows:
        shares = script_shares(text)
        script = next(iter(shares), None)
        if script is None or script == "other":
            skipped[script or "no_letters"] += 1
            continue
        tagged = label.rpartition("_")[2]
        if tagged in SCRIPTS and tagged != script:  # "zgh_Tfng" on a line of Latin letters
            skipped["script_differs_from_label"] += 1
            continue
        by_script[script].append((label, _features(text)))
    if not by_script:
        raise LidError("no labelled text in Arabic, Latin or Tifinagh script to train on")
    out_dir.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"format": MODEL_FORMAT, "models": {}, "constant": {},
                              "sha256": {}, "labels": {}, "params": settings,
                              "sources": sources or {}, "skipped": dict(skipped)}
    for script in sorted(by_script):
        counts = Counter(label for label, _ in by_script[script])
        record["labels"][script] = dict(sorted(counts.items()))
        if len(counts) == 1:
            record["constant"][script] = next(iter(counts))
            continue
        file = f"{script}.ftz"
        _train_one(by_script[script], out_dir / file, settings)
        record["models"][script] = file
        record["sha256"][file] = sha256_file(out_dir / file)
    atomic_write_text(out_dir / "lid.json", json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    return record


def _train_supervised(data: Path, settings: dict[str, Any]) -> Any:
    """fastText's supervised training, retried when it stops on "Encountered NaN".

    fastText raises NaN when the learning rate is too high for the data (training diverged): the
    rate is halved, up to five times, and lid.json records the rate used. (With one thread and a
    seed, a run writes the same bytes every time, so a retry is no source of difference.)
    """
    for _ in range(6):
        try:
            return _fasttext().train_supervised(input=str(data), verbose=0, **settings)
        except RuntimeError as error:
            if "NaN" not in str(error):
                raise
            log.warning("fastText diverged at lr=%s; retrying at half the rate", settings["lr"])
            settings["lr"] = settings["lr"] / 2
    raise LidError(f"fastText diverged six times (last lr={settings['lr'] * 2}); give a lower "
                   "learning rate")


def _train_one(rows: list[tuple[str, str]], out: Path, settings: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "train.txt"
        data.write_text("".join(f"__label__{label} {text}\n" for label, text in rows),
                        encoding="utf-8")
        model = _train_supervised(data, settings)
        # Product quantization: the model shrinks ~20x for a few tenths of a point of accuracy.
        model.quantize(input=str(data), qnorm=True, retrain=False, cutoff=50_000,
                       thread=settings["thread"])
        partial = out.with_name(out.name + ".partial")
        model.save_model(str(partial))
        os.replace(partial, out)


@dataclass
class Scores:
    per_label: dict[str, dict[str, float]]  # label -> precision, recall, f1, support
    macro_f1: float
    confusion: dict[str, dict[str, int]]   # gold -> predicted -> count
    lines: int


def evaluate(identifier: Identifier, rows: Sequence[tuple[str, str]],
             labels: Sequence[str] | None = None, only_labels: bool = False) -> Scores:
    """Precision, recall and F1 per label, and their macro mean over `labels` (default: every
    gold label). only_labels: score just the rows whose gold label is in `labels` (else rows of
    other labels count as false positives when predicted as one of them)."""
    wanted = list(labels) if labels else sorted({gold for gold, _ in rows})
    if only_labels:
        rows = [(gold, text) for gold, text in rows if gold in wanted]
    predicted = identifier.identify(text for _, text in rows)
    confusion: dict[str, Counter[str]] = defaultdict(Counter)
    for (gold, _), (guess, _) in zip(rows, predicted, strict=True):
        confusion[gold][guess] += 1
    per_label = {}
    for label in wanted:
        tp = confusion[label][label]
        fp = sum(c[label] for gold, c in confusion.items() if gold != label)
        fn = sum(confusion[label].values()) - tp
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_label[label] = {"precision": round(precision, 4), "recall": round(recall, 4),
                            "f1": round(f1, 4), "support": tp + fn}
    scored = [v["f1"] for v in per_label.values() if v["support"]]
    return Scores(per_label, round(sum(scored) / len(scored), 4) if scored else 0.0,
                  {g: dict(c) for g, c in sorted(confusion.items())}, len(rows))
