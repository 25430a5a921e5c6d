"""A small raw "web crawl" made from the sample corpus, for `curate.input=sample`, demos and tests.

Pages of 6-10 sentences of one language from the bundled sample corpus (written for this
project), as a real crawl holds them: jsonl records with text, records with HTML (navigation,
cookie banner and copyright footer around the article), a WARC file with HTML responses, WET
conversion records, request records and one response whose bytes are not the UTF-8 it
declares; plus what curation must remove: exact copies of pages, a spam page of one repeated
line, a record with no letters, and personal data (Moroccan phone numbers, e-mail addresses, a
CIN) inside pages. Deterministic for a seed.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

from pretrain.data.corpus import read_documents, resolve_corpus

__all__ = ["write_sample_web"]

_PII = ["عيط ليا ف 0661234567 إلا بغيتي التفاصيل.",
        "Contact : salma.tazi@menara.ma ou 05 37 12 34 56.",
        "3ayet lia f +212 6 61 22 33 44 wla sift lia l ahmed.benali@gmail.com",
        "رقم البطاقة الوطنية ديالي BE123456 ضاع ليا."]


def _pages(seed: int) -> list[tuple[str, str]]:
    """(language, page text) pages of consecutive sample sentences."""
    rng = random.Random(seed)
    by_lang: dict[str, list[str]] = {}
    for doc in read_documents(resolve_corpus("sample")):
        by_lang.setdefault(doc.lang, []).append(doc.text)
    pages = []
    for lang, sentences in sorted(by_lang.items()):
        at = 0
        while at + 6 <= len(sentences):
            size = rng.randint(6, 10)
            pages.append((lang, "\n".join(sentences[at:at + size])))
            at += size
    rng.shuffle(pages)
    return pages


def _html(text: str) -> str:
    paragraphs = "".join(f"<p>{line}</p>" for line in text.split("\n"))
    return ("<html><head><meta charset='utf-8'><title>Siyada</title></head><body>"
            "<nav><a href='/'>Accueil</a> | <a href='/contact'>Contact</a></nav>"
            "<div class='cookies'>Ce site utilise des cookies. Accepter</div>"
            f"<article><h1>Article</h1>{paragraphs}</article>"
            "<footer>© 2024 Tous droits réservés - جميع الحقوق محفوظة</footer></body></html>")


def write_sample_web(folder: Path, seed: int = 0) -> list[Path]:
    """Write web.jsonl and crawl.warc.gz into `folder`; returns their paths."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    folder.mkdir(parents=True, exist_ok=True)
    pages = _pages(seed)
    rng = random.Random(seed + 1)
    with_pii = [(lang, text + "\n" + rng.choice(_PII)) for lang, text in pages[:8]]
    pages = with_pii + pages[8:]
    half = len(pages) // 2
    records = []
    for i, (_, text) in enumerate(pages[:half]):
        source = "news" if i % 3 else "forum"
        if i % 4 == 0:
            records.append({"html": _html(text), "source": source, "url": f"https://ex.ma/{i}"})
        else:
            records.append({"text": text, "source": source, "url": f"https://ex.ma/{i}"})
    records += [dict(records[1]), dict(records[2])]  # exact copies, as crawls hold them
    records.append({"text": "\n".join(["Promo !!! Achetez maintenant pas cher"] * 15),
                    "source": "forum"})
    records.append({"text": "2024 - 12 - 03 ::: 0000 +++", "source": "forum"})
    jsonl = folder / "web.jsonl"
    jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                     encoding="utf-8")

    warc = folder / "crawl.warc.gz"
    with open(warc, "wb") as out:
        writer = WARCWriter(out, gzip=True)

        def response(url: str, body: bytes) -> None:
            headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")],
                                       protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(url, "response",
                                                          payload=io.BytesIO(body),
                                                          http_headers=headers))

        for i, (_, text) in enumerate(pages[half:]):
            url = f"https://crawl.ma/{i}"
            writer.write_record(writer.create_warc_record(
                url, "request", payload=io.BytesIO(b"GET / HTTP/1.1\r\n\r\n")))
            if i % 2:
                response(url, _html(text).encode("utf-8"))
            else:
                writer.write_record(writer.create_warc_record(
                    url, "conversion", payload=io.BytesIO(text.encode("utf-8"))))
        response("https://crawl.ma/broken", b"\xff\xfe not utf-8 \xfa")
    return [jsonl, warc]
