"""The training mixture: how much of each stream (one per language/source) the model sees.

`plan_mixture` turns the prepared streams (from manifest.json) and `data.mixture` into one
share per stream; the loader gives those shares to mosaicml-streaming as
`Stream(proportion=...)`, which up- or down-samples each stream within every epoch.

Two ways to say it:
- no `weights`: languages share by temperature, share ~ tokens^(1/T) (T=1: natural sizes;
  larger T moves towards uniform, up-sampling small languages such as Tamazight);
- `weights`: relative weights for languages (`ary_Latn: 2`) or single streams
  (`ary_Latn/doda: 1`); every stream must be covered, a weight of 0 leaves it out.
Inside a language, streams without their own weight share its part in proportion to size.

Repeating data costs little up to about 4 epochs and then quickly stops helping
(Muennighoff et al. 2023, "Scaling Data-Constrained Language Models"), so the plan reports how
many times each stream will be seen at the run's token budget and warns above `max_epochs`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from pretrain.config import MixtureConfig
from pretrain.data import DataError


@dataclass(frozen=True)
class StreamShare:
    name: str  # "<lang>/<source>"
    path: str  # relative to the dataset folder
    lang: str
    tokens: int  # training tokens in the stream (its samples times seq_len)
    share: float  # fraction of the training samples drawn from this stream

    def epochs(self, token_budget: int) -> float:
        """How many times the run's token budget passes over this stream."""
        return self.share * token_budget / self.tokens


def _stream_tokens(stream: dict, seq_len: int) -> int:
    return stream["samples"] * seq_len


def plan_mixture(manifest: dict, mixture: MixtureConfig) -> list[StreamShare]:
    """One share per stream with a non-zero weight; the shares sum to 1."""
    streams = manifest["streams"]
    if not streams:
        raise DataError("the dataset has no training streams; re-run `pretrain prepare`")
    seq_len = manifest["seq_len"]
    by_language: dict[str, list[dict]] = defaultdict(list)
    for stream in streams:
        by_language[stream["lang"]].append(stream)
    size = {s["name"]: _stream_tokens(s, seq_len) for s in streams}

    if mixture.weights:
        known = set(by_language) | set(size)
        unknown = sorted(set(mixture.weights) - known)
        if unknown:
            raise DataError(f"data.mixture.weights: {', '.join(unknown)} is not a language or "
                            f"stream of this dataset; it has {', '.join(sorted(known))}")
        weight = {}
        for lang, members in by_language.items():
            own = [s for s in members if s["name"] in mixture.weights]
            rest = [s for s in members if s["name"] not in mixture.weights]
            for stream in own:
                weight[stream["name"]] = mixture.weights[stream["name"]]
            if rest and lang not in mixture.weights:
                raise DataError(f"data.mixture.weights: no weight for "
                                f"{', '.join(s['name'] for s in rest)}; give language {lang} "
                                "or each stream a weight (0 leaves it out)")
            rest_tokens = sum(size[s["name"]] for s in rest)
            for stream in rest:
                weight[stream["name"]] = (mixture.weights[lang] * size[stream["name"]]
                                          / rest_tokens)
    else:
        language_weight = {lang: sum(size[s["name"]] for s in members) ** (1 / mixture.temperature)
                           for lang, members in by_language.items()}
        weight = {}
        for lang, members in by_language.items():
            language_tokens = sum(size[s["name"]] for s in members)
            for stream in members:
                weight[stream["name"]] = (language_weight[lang] * size[stream["name"]]
                                          / language_tokens)

    total = sum(weight.values())
    if total <= 0:
        raise DataError("data.mixture.weights: every weight is 0, nothing left to train on")
    return [StreamShare(name=s["name"], path=s["path"], lang=s["lang"], tokens=size[s["name"]],
                        share=weight[s["name"]] / total)
            for s in streams if weight[s["name"]] > 0]


def describe_mixture(plan: list[StreamShare], token_budget: int, max_epochs: float) -> str:
    """A table of the effective mixture, with a warning line per over-repeated stream."""
    lines = [f"{'stream':<32} {'tokens':>12} {'share':>7} {'epochs':>7}"]
    warnings = []
    for stream in plan:
        epochs = stream.epochs(token_budget)
        lines.append(f"{stream.name:<32} {stream.tokens:>12,} {stream.share:>7.1%} {epochs:>7.2f}")
        if epochs > max_epochs:
            warnings.append(f"warning: {stream.name} would be seen {epochs:.1f} times at "
                            f"{token_budget:,} tokens (more than data.mixture.max_epochs="
                            f"{max_epochs:g}); repeated data stops helping past ~4 epochs")
    return "\n".join(lines + warnings)
