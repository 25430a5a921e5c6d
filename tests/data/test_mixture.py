"""Training mixtures: shares per stream, the epochs report, and streaming honouring them."""

from collections import Counter
from itertools import islice
from pathlib import Path

import numpy as np
import pytest

from pretrain.config import MixtureConfig
from pretrain.data import DataError
from pretrain.data.loader import build_train_loader
from pretrain.data.mixture import describe_mixture, plan_mixture
from tests.stream_datasets import write_stream_dataset

SEQ_LEN = 8


def manifest(**samples_per_stream: int) -> dict:
    """A manifest with streams named like `ary_Latn__doda` -> `ary_Latn/doda`."""
    streams = []
    for key, samples in samples_per_stream.items():
        lang, source = key.split("__")
        streams.append({"name": f"{lang}/{source}", "path": f"train/{lang}/{source}",
                        "lang": lang, "source": source, "samples": samples})
    return {"seq_len": SEQ_LEN, "streams": streams}


def shares(plan) -> dict[str, float]:
    return {stream.name: stream.share for stream in plan}


def test_temperature_one_keeps_natural_proportions():
    plan = plan_mixture(manifest(fra_Latn__web=300, ary_Latn__doda=100),
                        MixtureConfig(temperature=1.0))
    assert shares(plan) == pytest.approx({"fra_Latn/web": 0.75, "ary_Latn/doda": 0.25})
    assert plan[0].tokens == 300 * SEQ_LEN


def test_higher_temperature_upsamples_small_languages():
    plan = plan_mixture(manifest(fra_Latn__web=900, zgh_Tfng__sample=100),
                        MixtureConfig(temperature=2.0))
    # shares ~ tokens^(1/2): 30 : 10
    assert shares(plan) == pytest.approx({"fra_Latn/web": 0.75, "zgh_Tfng/sample": 0.25})


def test_streams_of_one_language_split_its_share_by_size():
    plan = plan_mixture(manifest(ary_Latn__doda=300, ary_Latn__forum=100, fra_Latn__web=400),
                        MixtureConfig(temperature=1e6))  # languages become uniform
    assert shares(plan) == pytest.approx(
        {"ary_Latn/doda": 0.375, "ary_Latn/forum": 0.125, "fra_Latn/web": 0.5}, abs=1e-4)


def test_weights_by_language_and_by_stream():
    data = manifest(ary_Latn__doda=300, ary_Latn__forum=100, fra_Latn__web=400, eng_Latn__web=50)
    plan = plan_mixture(data, MixtureConfig(weights={"ary_Latn": 2, "ary_Latn/forum": 1,
                                                     "fra_Latn": 1, "eng_Latn": 0}))
    # ary_Latn/forum has its own weight, so ary_Latn's 2 goes to doda alone; eng is left out.
    assert shares(plan) == pytest.approx(
        {"ary_Latn/doda": 0.5, "ary_Latn/forum": 0.25, "fra_Latn/web": 0.25})


@pytest.mark.parametrize("weights, message", [
    ({"ary_Latn": 1, "klingon": 1}, "klingon is not a language or stream"),
    ({"ary_Latn": 1}, "no weight for fra_Latn/web"),
    ({"ary_Latn": 0, "fra_Latn": 0}, "every weight is 0"),
])
def test_bad_weights_are_one_clear_error(weights, message):
    with pytest.raises(DataError, match=message):
        plan_mixture(manifest(ary_Latn__doda=10, fra_Latn__web=10), MixtureConfig(weights=weights))


def test_epochs_report_warns_past_the_limit():
    plan = plan_mixture(manifest(fra_Latn__web=1000, zgh_Tfng__sample=10),
                        MixtureConfig(weights={"fra_Latn": 1, "zgh_Tfng": 1}))
    budget = 1000 * SEQ_LEN
    assert plan[1].epochs(budget) == pytest.approx(0.5 * budget / (10 * SEQ_LEN))
    report = describe_mixture(plan, budget, max_epochs=4)
    assert "zgh_Tfng/sample" in report and "50.0%" in report
    assert "warning: zgh_Tfng/sample would be seen 50.0 times" in report
    assert "warning: fra_Latn/web" not in report


# --- through mosaicml-streaming, on real MDS shards ---

def write_dataset(root: Path, samples_per_stream: dict[str, int]) -> Path:
    """Streams whose samples carry (stream number, sample number) in their first two tokens."""
    def samples(number: int, count: int):
        for index in range(count):
            tokens = np.full(SEQ_LEN, 7, np.uint32)
            tokens[:2] = number, index
            yield tokens, np.zeros(SEQ_LEN, np.uint16)

    streams = {key.replace("__", "/"): samples(number, count)
               for number, (key, count) in enumerate(samples_per_stream.items())}
    return write_stream_dataset(root, streams, seq_len=SEQ_LEN)


def stream_of(batch) -> list[int]:
    return batch["input_ids"][:, 0].tolist()


def sample_keys(batch) -> list[tuple[int, int]]:
    return [tuple(row[:2]) for row in batch["input_ids"].tolist()]


def test_streaming_draws_the_planned_shares(tmp_path):
    dataset = write_dataset(tmp_path, {"fra_Latn__web": 60, "ary_Latn__doda": 20})
    weights = MixtureConfig(weights={"fra_Latn": 1, "ary_Latn": 3})
    loader = build_train_loader(dataset, micro_batch_size=4, seed=3, shuffle=True, num_workers=0,
                                mixture=weights)
    counts = Counter(number for batch in loader for number in stream_of(batch))
    # One epoch is as long as the data (80 samples): 1/4 from fra (stream 0), 3/4 from ary,
    # which means each ary sample is repeated three times.
    assert counts == {0: 20, 1: 60}


def test_resume_on_another_data_parallel_size_keeps_the_order(tmp_path):
    """Streaming's global sample order depends on the seed and the canonical node count, not on
    the number of ranks; with the global batch kept, one rank picks up where two ranks stopped."""
    dataset = write_dataset(tmp_path, {"fra_Latn__web": 40, "ary_Latn__doda": 24})
    mixture = MixtureConfig(temperature=2.0)

    def loader(rank: int, world: int, batch: int):
        return build_train_loader(dataset, micro_batch_size=batch, seed=11, shuffle=True,
                                  num_workers=0, dp_rank=rank, dp_world_size=world,
                                  mixture=mixture)

    two_ranks = [loader(rank, 2, 3) for rank in (0, 1)]
    iterators = [iter(each) for each in two_ranks]
    for _ in range(4):  # four steps of a global batch of 6
        for each in iterators:
            next(each)
    state = two_ranks[0].state_dict()
    expected = [sorted(sample_keys(a) + sample_keys(b))
                for a, b in islice(zip(*iterators, strict=True), 3)]

    one_rank = loader(0, 1, 6)
    one_rank.load_state_dict(state)
    resumed = [sorted(sample_keys(batch)) for batch in islice(iter(one_rank), 3)]
    assert resumed == expected
