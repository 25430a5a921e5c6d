"""The data card: what a curated corpus holds, where it came from, and what was removed.

`write_data_card(folder, curation)` writes DATA_CARD.md (for people) and data_card.json (the
same facts, for tools) from curation.json: sources and their licences (curate.licences; a
source without one is listed as "not stated"), every input file's sha256, documents and bytes
per language after each stage (identified, quality, pii, dedup), what each filter removed per
language, the language-ID distribution with its confidence histogram and the code-switched
share, personal data removed per type and language, duplicates removed, bad input skipped.
`pretrain prepare` adds the tokens per language and the tokenizer's sha256 when its corpus is a
curated folder, and `pretrain export` copies the card into the model card. It is the record a
lab needs for a declaration to the CNDP (law 09-08) and for a model's documentation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pretrain.fileio import atomic_write_json, atomic_write_text

__all__ = ["DATA_CARD", "DATA_CARD_JSON", "card_facts", "render", "write_data_card"]

DATA_CARD = "DATA_CARD.md"
DATA_CARD_JSON = "data_card.json"
STAGES = ("identified", "quality", "pii", "dedup")
NOT_STATED = "not stated"


def card_facts(curation: dict[str, Any], prepared: dict[str, Any] | None = None
               ) -> dict[str, Any]:
    """The card's content as plain data (data_card.json)."""
    licences = curation["config"]["curate"].get("licences", {})
    sources = sorted({rel.split("/")[2].removesuffix(".jsonl.gz")
                      for rel in curation["outputs"]})
    languages = sorted({lang for stage in curation["stages"].values() for lang in stage})
    histogram = curation["confidence"]
    facts: dict[str, Any] = {
        "name": curation["name"],
        "sources": {source: licences.get(source, NOT_STATED) for source in sources},
        "inputs": curation["inputs"],
        "read": curation["read"],
        "stages": {stage: curation["stages"].get(stage, {}) for stage in STAGES},
        "languages": languages,
        "removed": curation["removed"],
        "lid": {"model": _model_name(curation["config"]),
                "confidence_histogram": histogram,
                "mean_confidence": {lang: _histogram_mean(bins) for lang, bins in
                                    histogram.items()},
                "code_switched_kept": curation["mixed"]},
        "pii": {"by_language": curation["pii"], "documents": curation["pii_documents"],
                "placeholders": "typed, e.g. <PHONE>, <EMAIL>, <CIN>, <RIB>, <IBAN>, <CARD>, "
                                "<IP> (pretrain/data/pii.py)"},
        "bad_input": {reason: entry["count"] for reason, entry in curation["bad_input"].items()},
        "outputs": curation["outputs"],
    }
    if prepared is not None:
        facts["prepared"] = prepared
    return facts


def _model_name(config: dict[str, Any]) -> str:
    """The LID model as the card names it: its path (or "bundled") and what it was trained on."""
    described = config["lid_model"]
    name = config.get("lid", {}).get("model") or "the bundled model (pretrain/data/lid_model)"
    trained_on = sorted(Path(spec.partition("=")[2] or spec).name
                        for spec in described.get("sources", {}))
    return name + (f", trained on {', '.join(trained_on)}" if trained_on else "")


def _histogram_mean(bins: list[int]) -> float:
    total = sum(bins)
    width = 1 / len(bins)
    return round(sum((i + 0.5) * width * n for i, n in enumerate(bins)) / total, 3) if total else 0


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def render(facts: dict[str, Any]) -> str:
    """DATA_CARD.md."""
    out = [f"# Data card: {facts['name']}", "",
           "Written by `pretrain curate` (Siyada); every number below is counted, not estimated.",
           "", "## Sources and licences", ""]
    out += _table(["source", "licence"], [[s, lic] for s, lic in facts["sources"].items()])
    missing = [s for s, lic in facts["sources"].items() if lic == NOT_STATED]
    if missing:
        out += ["", f"**No licence stated for {', '.join(missing)}**: set curate.licences "
                "before this corpus is trained on or published."]
    out += ["", "## Inputs", ""]
    out += _table(["file", "bytes", "sha256"],
                  [[i["path"], f"{i['bytes']:,}", i["sha256"]] for i in facts["inputs"]])
    read = facts["read"]
    out += ["", f"Read {read.get('documents', 0):,} documents ({read.get('bytes', 0):,} bytes); "
            f"{read.get('not_documents', 0):,} records were not documents (WARC requests, "
            "metadata, non-HTML responses).", "", "## Documents and bytes per language and stage",
            ""]
    rows = []
    for lang in facts["languages"]:
        row: list[Any] = [lang]
        for stage in STAGES:
            counts = facts["stages"][stage].get(lang, {})
            row.append(f"{counts.get('documents', 0):,} / {counts.get('bytes', 0):,}")
        rows.append(row)
    out += _table(["language", *[f"{s} (docs / bytes)" for s in STAGES]], rows)
    if "prepared" in facts:
        prepared = facts["prepared"]
        out += ["", f"Prepared with tokenizer sha256 `{prepared['tokenizer_sha256']}`; tokens "
                "per language (train split): "
                + ", ".join(f"{lang} {n:,}" for lang, n in prepared["tokens"].items()) + "."]
    out += ["", "## Removed, by rule and language", ""]
    out += _table(["rule", "language", "documents"],
                  [[reason, lang, f"{n:,}"] for reason, langs in facts["removed"].items()
                   for lang, n in langs.items()])
    out += ["", "## Language identification", "",
            f"Model: {facts['lid']['model']}. Confidence histogram (10 bins from 0 to 1) and "
            "mean, per language; code-switched documents kept under their main language:", ""]
    out += _table(["language", "mean confidence", "histogram", "code-switched"],
                  [[lang, facts["lid"]["mean_confidence"][lang], " ".join(map(str, bins)),
                    facts["lid"]["code_switched_kept"].get(lang, 0)]
                   for lang, bins in facts["lid"]["confidence_histogram"].items()])
    out += ["", "## Personal data (law 09-08)", "",
            f"Replaced with {facts['pii']['placeholders']}.", ""]
    out += _table(["language", "documents with PII", "by type"],
                  [[lang, f"{facts['pii']['documents'].get(lang, 0):,}",
                    ", ".join(f"{t} {n:,}" for t, n in types.items())]
                   for lang, types in facts["pii"]["by_language"].items()] or [["-", 0, "none"]])
    bad = facts["bad_input"]
    out += ["", "## Bad input skipped", "",
            ", ".join(f"{reason}: {n:,}" for reason, n in bad.items()) if bad else "None.", ""]
    return "\n".join(out) + "\n"


def write_data_card(folder: Path, curation: dict[str, Any],
                    prepared: dict[str, Any] | None = None) -> dict[str, Any]:
    facts = card_facts(curation, prepared)
    atomic_write_json(folder / DATA_CARD_JSON, facts)
    atomic_write_text(folder / DATA_CARD, render(facts))
    return facts
