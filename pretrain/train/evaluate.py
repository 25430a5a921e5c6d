"""Per-language validation: loss, perplexity and bits per byte on each language's held-out split.

A national model is judged per language, and the scaling-law fits need a final validation loss
per language, so every run evaluates `val/<lang>/` of its prepared dataset (`eval.*` keys):
every `eval.interval` steps and when it finishes. The numbers go into the step's row of
`metrics.jsonl` (and TensorBoard) as `val/<lang>/loss`, `val/<lang>/ppl`, `val/<lang>/bpb`, and
`val/loss`, `val/bpb` over all languages together.

Bits per byte = total nats / (ln 2 x UTF-8 bytes of the predicted text), so models with
different tokenizers compare fairly. The bytes of a target token are those it stands for: with
byte-level BPE, one byte per character of its vocabulary entry; special tokens (the document's
end) count none.

Every data-parallel rank evaluates its share of each language's first `eval.max_sequences`
sequences (all pipeline stages of one rank the same share); ranks with fewer sequences run
padding sequences that count nothing, because a ZeRO-3 or pipeline forward is a collective
that all ranks must run equally often.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from pretrain.data.dataset import TOKENIZER, VAL, load_manifest
from pretrain.data.loader import IGNORE_INDEX, collate, read_samples
from pretrain.data.tokenizer import (
    NUM_SPECIAL_TOKENS,
    PAD_ID,
    encode_documents,
    load_tokenizer,
)
from pretrain.nn.model import causal_lm_loss
from pretrain.parallel.engine import Engine, MicroBatch
from pretrain.train.metrics import ALL_LANGUAGES, validation_by_language


def token_bytes(tokenizer_path: Path) -> np.ndarray:
    """UTF-8 bytes each token id stands for (byte-level BPE: one per character of the entry)."""
    tokenizer = load_tokenizer(tokenizer_path)
    sizes = np.zeros(tokenizer.get_vocab_size(), dtype=np.int64)
    for token, index in tokenizer.get_vocab().items():
        if index >= NUM_SPECIAL_TOKENS:
            sizes[index] = len(token)
    return sizes


class ModelEvaluator:
    """A plain `Transformer` behind the engines' `evaluate` interface (one process, no DeepSpeed),
    for evaluating a consolidated checkpoint or an exported model."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.model, self.device = model.to(device).eval(), device

    @torch.no_grad()
    def evaluate(self, micro_batches: list[MicroBatch]) -> Tensor:
        nats = torch.zeros((), dtype=torch.float64, device=self.device)
        for batch in micro_batches:
            logits = self.model(batch["input_ids"], batch["doc_ids"])
            nats += causal_lm_loss(logits, batch["labels"])[1].to(torch.float64)
        return nats


@dataclass
class LanguageTotals:
    """Sums over a language's evaluated targets, added up over all ranks."""

    nats: float
    targets: int
    bytes: int

    def metrics(self) -> dict[str, float]:
        loss = self.nats / self.targets
        return {"loss": loss, "ppl": math.exp(min(loss, 700.0)),  # exp overflows past ~709
                "bpb": self.nats / (math.log(2) * self.bytes)}


class Validation:
    """Evaluation sequences of each language, split over the data-parallel ranks.

    Built from a prepared dataset's held-out split (`from_dataset`, during training) or from
    plain texts, one per sequence (`from_texts`, for `pretrain eval` on real text).

    texts: per language, how many texts the sequences hold (one each), for bits per text;
        empty for packed dataset sequences.
    """

    def __init__(self, samples_by_language: dict[str, list[dict[str, np.ndarray]]],
                 tokenizer_path: Path, micro_batch_size: int, dp_rank: int = 0,
                 dp_world_size: int = 1, texts: dict[str, int] | None = None) -> None:
        self.micro_batch_size = micro_batch_size
        self.byte_table = torch.from_numpy(token_bytes(tokenizer_path))
        self.batches: dict[str, list[MicroBatch]] = {
            language: self._share(samples, dp_rank, dp_world_size)
            for language, samples in samples_by_language.items()}
        self.texts = texts or {}

    @classmethod
    def from_dataset(cls, dataset_dir: Path, micro_batch_size: int, max_sequences: int,
                     dp_rank: int = 0, dp_world_size: int = 1) -> Validation:
        """The first `max_sequences` (0: all) held-out sequences of each language."""
        manifest = load_manifest(dataset_dir)
        samples_by_language = {}
        for language, stream in sorted(manifest["splits"][VAL]["languages"].items()):
            if stream["samples"]:
                count = min(stream["samples"], max_sequences or stream["samples"])
                samples_by_language[language] = list(itertools.islice(
                    read_samples(Path(dataset_dir) / stream["path"]), count))
        return cls(samples_by_language, Path(dataset_dir) / TOKENIZER, micro_batch_size,
                   dp_rank, dp_world_size)

    @classmethod
    def from_texts(cls, texts: dict[str, list[str]], tokenizer_path: Path, seq_len: int,
                   micro_batch_size: int) -> Validation:
        """One sequence per text ([BOS] text [EOS], cut at seq_len), padding counting nothing."""
        tokenizer = load_tokenizer(tokenizer_path)
        samples_by_language = {}
        for language, items in sorted(texts.items()):
            samples = []
            for ids in encode_documents(tokenizer, items):
                ids = ids[:seq_len]
                tokens = np.full(seq_len, PAD_ID, dtype=np.int64)
                tokens[:len(ids)] = ids
                samples.append({"tokens": tokens, "doc_ids": np.zeros(seq_len, np.int64)})
            samples_by_language[language] = samples
        return cls(samples_by_language, tokenizer_path, micro_batch_size,
                   texts={language: len(items) for language, items in texts.items()})

    def _share(self, samples: list[dict[str, np.ndarray]], dp_rank: int,
               dp_world_size: int) -> list[MicroBatch]:
        """This rank's micro-batches; every rank gets the same number (padding counts nothing)."""
        per_rank = math.ceil(len(samples) / dp_world_size)
        per_rank = math.ceil(per_rank / self.micro_batch_size) * self.micro_batch_size
        mine = samples[dp_rank::dp_world_size]
        padding = {"tokens": np.full_like(samples[0]["tokens"], PAD_ID),
                   "doc_ids": np.zeros_like(samples[0]["doc_ids"])}
        mine += [padding] * (per_rank - len(mine))
        return [collate(mine[start:start + self.micro_batch_size])
                for start in range(0, per_rank, self.micro_batch_size)]

    @property
    def languages(self) -> list[str]:
        return list(self.batches)

    def run(self, engine: Engine | ModelEvaluator, device: torch.device) -> dict[str, float]:
        """Evaluate every language; the metrics as named in metrics.jsonl, the same on all ranks.

        From texts, also `val/<lang>/bits_per_text`: total bits over the number of texts (for
        parallel texts such as the UDHR, the fairest comparison across languages).
        """
        sums = torch.zeros(len(self.batches), 3, dtype=torch.float64, device=engine.device)
        for row, batches in enumerate(self.batches.values()):
            on_device = [{name: tensor.to(device) for name, tensor in batch.items()}
                         for batch in batches]
            nats = engine.evaluate(on_device)
            if nats is not None:  # a rank that computes the loss counts its targets once
                sums[row, 0] = nats.to(torch.float64)
                sums[row, 1:] = self._targets_and_bytes(batches).to(engine.device)
        if dist.is_initialized():
            dist.all_reduce(sums)
        totals = {language: LanguageTotals(float(nats), int(targets), int(size))
                  for language, (nats, targets, size) in zip(self.batches, sums.tolist(),
                                                             strict=True)}
        overall = LanguageTotals(sum(t.nats for t in totals.values()),
                                 sum(t.targets for t in totals.values()),
                                 sum(t.bytes for t in totals.values()))
        metrics = {f"val/{name}": value for name, value in overall.metrics().items()
                   if name != "ppl"}
        for language, total in totals.items():
            metrics.update({f"val/{language}/{name}": value
                            for name, value in total.metrics().items()})
            if language in self.texts:
                metrics[f"val/{language}/bits_per_text"] = \
                    total.nats / math.log(2) / self.texts[language]
        return metrics

    def _targets_and_bytes(self, batches: list[MicroBatch]) -> Tensor:
        targets = torch.zeros(2, dtype=torch.float64)
        for batch in batches:
            labels = batch["labels"]
            kept = labels[labels != IGNORE_INDEX]
            targets[0] += kept.numel()
            targets[1] += self.byte_table[kept].sum()
        return targets


def format_validation(metrics: dict[str, float]) -> str:
    """The log's validation lines: all languages, then one per language."""
    by_language = validation_by_language(metrics)
    overall = by_language.pop(ALL_LANGUAGES)
    lines = [f"validation | loss {overall['loss']:.4g} | bpb {overall['bpb']:.4g}"]
    for language, values in sorted(by_language.items()):
        line = (f"  {language:<10} loss {values['loss']:.4g} | ppl {values['ppl']:.4g} | bpb "
                f"{values['bpb']:.4g}")
        if "bits_per_text" in values:
            line += f" | bits per text {values['bits_per_text']:.4g}"
        lines.append(line)
    return "\n".join(lines)
