"""The sample log: one record per global batch per rank, the last record of a batch wins, and
only a cut-short last line is forgiven. On real ranks: tests/slurm/test_multinode.py."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pretrain.train.sample_log import SampleLog, read_sample_log, sequence_hash


def micro(*rows: list[int]) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.tensor(rows, dtype=torch.int64)}


def test_a_sequence_is_named_by_the_sha256_of_its_int64_tokens():
    expected = hashlib.sha256(np.array([1, 2, 300], dtype="<i8").tobytes()).hexdigest()[:16]
    assert sequence_hash(torch.tensor([1, 2, 300])) == expected
    assert sequence_hash(np.array([1, 2, 300], dtype=np.uint16)) == expected


def test_records_per_batch_and_the_last_one_wins(tmp_path):
    log = SampleLog(tmp_path, rank=3, data_rank=1)
    trainer = SimpleNamespace()
    log.before_step(trainer, 1, [micro([1, 2], [3, 4]), micro([5, 6])])
    log.before_step(trainer, 2, [micro([7, 8])])
    log.before_step(trainer, 2, [micro([9, 9])])  # resumed: batch 2 trained again
    records = read_sample_log(tmp_path)[3]
    assert sorted(records) == [1, 2]
    assert records[1]["samples"] == [sequence_hash(torch.tensor(row))
                                     for row in ([1, 2], [3, 4], [5, 6])]
    assert records[1]["data_rank"] == 1 and records[1]["rank"] == 3 and records[1]["host"]
    assert records[2]["samples"] == [sequence_hash(torch.tensor([9, 9]))]


def test_a_cut_short_last_line_is_left_out_and_a_bad_line_elsewhere_is_an_error(tmp_path):
    log = SampleLog(tmp_path, rank=0, data_rank=0)
    log.before_step(SimpleNamespace(), 1, [micro([1])])
    with log.path.open("a") as handle:
        handle.write('{"batch": 2, "sam')  # killed mid-write
    assert sorted(read_sample_log(tmp_path)[0]) == [1]
    log.path.write_text('not json\n{"batch": 1, "samples": []}\n')
    with pytest.raises(ValueError, match=r"rank_00000.jsonl:1: not a sample-log record"):
        read_sample_log(tmp_path)
