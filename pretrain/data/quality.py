"""Quality filters per language: datatrove's Gopher, C4 and FineWeb rules, with words that fit.

datatrove (0.6) implements the rules as FineWeb and FineWeb-2 ran them; we run those classes
(`GopherRepetitionFilter`, `GopherQualityFilter`, `C4QualityFilter`, `FineWebQualityFilter`),
in FineWeb's order, with each language's thresholds (`quality.languages.<lang>`, see
FilterRules in pretrain/config.py). What datatrove does not have for our languages is ours:

- Words and sentences (`script_words()`, a datatrove WordTokenizer): a word is what Gopher
  calls one, a whitespace-separated token, here without the punctuation at its edges, so Arabic
  keeps its harakat and clitics (والمغرب is one word), Arabizi its digit letters (3lach, 7ta),
  Tifinagh its labialization mark; a sentence ends at . ! ? ؟ ۔ … or a line break. datatrove's
  default tokenizers would need NLTK or spaCy models downloaded, cut Arabizi at every digit,
  and make every comma a word (a page of short sentences then fails Gopher's 80% rule).
- Stop words per language (Darija's ديال / dyal, Tamazight's ⴷ / d ...), for Gopher's rule that
  a document must hold at least two: the English list would remove every Darija page.
- Policy and boilerplate lines in French and Arabic (cookies, conditions d'utilisation, جميع
  الحقوق محفوظة ...), beside C4's English ones.

`QualityFilter(config).apply(text, lang)` gives (text, None) to keep, with C4's line removals
applied, or (text, reason) to drop; reasons are `<filter>:<rule>` as datatrove names them
(`gopher_quality:gopher_short_doc`), counted per language by the curation pipeline.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from pretrain.config import FilterRules, QualityConfig

__all__ = ["QualityFilter", "script_words", "split_words"]

_SENTENCE = re.compile(r"[^.!?؟۔…\n]+(?:[.!?؟۔…]+|\n|$)")

# Lines that are site furniture, not text: dropped like C4's English policy lines.
_POLICY = re.compile(
    r"cookie|conditions g[ée]n[ée]rales|conditions d'utilisation|mentions l[ée]gales|"
    r"politique de confidentialit[ée]|tous droits r[ée]serv[ée]s|privacy policy|terms of use|"
    r"جميع الحقوق محفوظة|سياسة الخصوصية|شروط الاستخدام|ملفات تعريف الارتباط", re.IGNORECASE)


def split_words(text: str) -> list[str]:
    """Words as Gopher counts them: whitespace-separated, without the punctuation at their
    edges ("ديال،" is ديال, "3lach?" is 3lach); a token of punctuation alone stays itself."""
    return [_without_edge_punctuation(token) for token in text.split()]


def _without_edge_punctuation(token: str) -> str:
    if token[0].isalnum() and token[-1].isalnum():  # most words: nothing to strip
        return token
    start, end = 0, len(token)
    while start < end and unicodedata.category(token[start])[0] in "PS":
        start += 1
    while end > start and unicodedata.category(token[end - 1])[0] in "PS":
        end -= 1
    return token[start:end] or token


def _datatrove_word_tokenizer() -> type:
    from datatrove.utils.word_tokenizers import WordTokenizer

    class _ScriptWords(WordTokenizer):
        """datatrove's tokenizer interface over our script-aware words and sentences."""

        def __init__(self) -> None:
            super().__init__("siyada")

        def word_tokenize(self, text: str) -> list[str]:
            return split_words(text)

        def sent_tokenize(self, text: str) -> list[str]:
            return [m.group().strip() for m in _SENTENCE.finditer(text) if m.group().strip()]

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [m.span() for m in _SENTENCE.finditer(text) if m.group().strip()]

    return _ScriptWords


@lru_cache(maxsize=1)
def script_words() -> object:
    """One shared tokenizer (datatrove caches word splits by tokenizer and text)."""
    return _datatrove_word_tokenizer()()


class QualityFilter:
    """The configured datatrove filters for each language, built once per language."""

    def __init__(self, config: QualityConfig | None = None) -> None:
        self.config = config or QualityConfig()
        self._built: dict[str, list[tuple[str, object]]] = {}

    def _filters(self, lang: str) -> list[tuple[str, object]]:
        if lang not in self._built:
            self._built[lang] = _build(self.config.rules(lang))
        return self._built[lang]

    def apply(self, text: str, lang: str) -> tuple[str, str | None]:
        """(text after line removals, None) to keep; (text, "<filter>:<rule>") to drop."""
        if not self.config.enabled:
            return text, None
        from datatrove.data import Document

        rules = self.config.rules(lang)
        if rules.policy_lines:
            kept = [line for line in text.split("\n") if not _POLICY.search(line)]
            text = "\n".join(kept).strip()
        if not split_words(text):
            return text, "quality:empty"
        doc = Document(text=text, id="")
        for name, datatrove_filter in self._filters(lang):
            verdict = datatrove_filter.filter(doc)  # type: ignore[attr-defined]
            keep, reason = (verdict, "") if isinstance(verdict, bool) else verdict
            if not keep:
                return doc.text, f"{name}:{reason or 'removed'}"
            if not doc.text.strip():
                return doc.text, f"{name}:empty_after_line_filters"
        return doc.text, None


def _build(rules: FilterRules) -> list[tuple[str, object]]:
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )

    words = script_words()
    out: list[tuple[str, object]] = []
    if rules.gopher_repetition:
        out.append(("gopher_repetition", GopherRepetitionFilter(language=words)))
    if rules.gopher_quality:
        out.append(("gopher_quality", GopherQualityFilter(
            min_doc_words=rules.min_doc_words, max_doc_words=rules.max_doc_words,
            min_avg_word_length=rules.min_avg_word_length,
            max_avg_word_length=rules.max_avg_word_length,
            max_symbol_word_ratio=rules.max_symbol_word_ratio,
            max_bullet_lines_ratio=rules.max_bullet_lines_ratio,
            max_ellipsis_lines_ratio=rules.max_ellipsis_lines_ratio,
            max_non_alpha_words_ratio=rules.min_alpha_words_ratio,
            min_stop_words=rules.min_stop_words if rules.stop_words else None,
            stop_words=list(rules.stop_words), language=words)))
    if rules.c4:
        out.append(("c4", C4QualityFilter(
            split_paragraph=True, remove_citations=True,
            filter_no_terminal_punct=rules.c4_terminal_punctuation,
            min_num_sentences=rules.c4_min_sentences,
            min_words_per_line=rules.c4_min_words_per_line, max_word_length=1000,
            filter_lorem_ipsum=True, filter_javascript=True, filter_curly_bracket=True,
            filter_policy=True, language=words)))
    if rules.fineweb:
        out.append(("fineweb", FineWebQualityFilter(
            line_punct_thr=rules.line_punct_thr, line_punct_exclude_zero=False,
            short_line_thr=rules.short_line_thr, short_line_length=rules.short_line_length,
            char_duplicates_ratio=rules.char_dup_ratio, new_line_ratio=rules.new_line_ratio,
            language=words)))
    return out
