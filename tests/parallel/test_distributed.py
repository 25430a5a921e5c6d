"""Both engines on real ranks (torchrun, gloo on CPU), against one process on the same batch.

The reference is the zero3 engine in a single process with twice the gradient accumulation, so
every optimizer step sees the same 16 sequences (global batch) as the parallel runs: mosaicml-
streaming's sample order depends on the seed and the global batch, not on the number of ranks,
and the loss is normalised per target of the global batch (pretrain/parallel/engine.py).

Tolerance: relative 1e-6 on the loss and 1e-5 on the gradient norm, after 6 steps. The runs
do the same arithmetic in fp32 but sum gradients in a different order (per-rank halves summed
by the all-reduce, bucketed reduce-scatter, tied-embedding gradients added across stages), so
the last bits of every gradient differ: float32 has 24 bits of mantissa (about 6e-8 relative),
and a few steps of Adam carry that into the loss at ~1e-7 (measured: at most 1.1e-7 for the
loss, 2.8e-7 for the norm). Ten times that margin still fails on any real error: a wrong loss
normalisation, a mis-fed stage or a skipped micro-batch moves the loss by 1e-3 or more.
"""

from pathlib import Path

import pytest

from pretrain.checkpoint.store import find_resumable
from pretrain.train.metrics import read_metrics
from tests.cli_runs import TINY, losses, ok, prepare_dataset, pretrain

pytestmark = [pytest.mark.e2e, pytest.mark.distributed]
STEPS = 6


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return prepare_dataset(tmp_path_factory.mktemp("prepared"))


@pytest.fixture(scope="module")
def single_process(dataset, tmp_path_factory):
    """Reference runs, one per embedding tying, computed on first use."""
    runs: dict[bool, list[dict]] = {}

    def reference(tied: bool) -> list[dict]:
        if tied not in runs:
            root = tmp_path_factory.mktemp("reference")
            ok(pretrain("train", *TINY, f"data.dataset={dataset}", f"run.dir={root / 'run'}",
                        f"model.tie_embeddings={tied}", f"train.max_steps={STEPS}",
                        "train.grad_accum_steps=2", cwd=root))
            runs[tied] = read_metrics(root / "run" / "metrics.jsonl")
        return runs[tied]

    return reference


ZERO3_2DP = (2, ["parallel.engine=zero3", "train.grad_accum_steps=1"],
             "2 ranks, pure data parallel")
PIPELINE_2PP = (2, ["parallel.engine=pipeline", "parallel.pipeline_stages=2",
                    "train.grad_accum_steps=2"],
                "2 ranks = 2 pipeline stages x 1 data-parallel rank")
PIPELINE_2PP_2DP = (4, ["parallel.engine=pipeline", "parallel.pipeline_stages=2",
                        "train.grad_accum_steps=1"],
                    "4 ranks = 2 pipeline stages x 2 data-parallel ranks")


@pytest.mark.parametrize("tied, processes, overrides, layout", [
    (True, *ZERO3_2DP), (False, *ZERO3_2DP), (True, *PIPELINE_2PP), (False, *PIPELINE_2PP),
    (False, *PIPELINE_2PP_2DP),  # the 4-process layout once, to keep CI time down
    # Optimizer state and step on the CPU (DeepSpeed's CPU Adam): same arithmetic, same curve.
    (True, 1, ["parallel.offload_optimizer=cpu", "train.grad_accum_steps=2"],
     "1 rank, pure data parallel"),
], ids=["zero3-2dp-tied", "zero3-2dp", "pipeline-2pp-tied", "pipeline-2pp", "pipeline-2pp-2dp",
        "zero3-offload-cpu"])
def test_engine_matches_a_single_process_on_the_same_global_batch(
        dataset, single_process, tmp_path, tied, processes, overrides, layout):
    run_dir = tmp_path / "run"
    result = ok(pretrain("train", *TINY, *overrides, f"data.dataset={dataset}",
                         f"run.dir={run_dir}", f"model.tie_embeddings={tied}",
                         f"train.max_steps={STEPS}", cwd=tmp_path, processes=processes))
    assert f"layout: {layout}" in result.stdout
    parallel, reference = read_metrics(run_dir / "metrics.jsonl"), single_process(tied)
    assert [row["tokens_seen"] for row in parallel] == [row["tokens_seen"] for row in reference]
    for ours, theirs in zip(parallel, reference, strict=True):
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-6), ours["step"]
        assert ours["grad_norm"] == pytest.approx(theirs["grad_norm"], rel=1e-5), ours["step"]
    assert parallel[-1]["loss"] < parallel[0]["loss"] - 0.1  # and it learns
    # The final per-language validation: each rank's share, padded, summed over the ranks
    # that compute the loss (the last stage in a pipeline), equals one process's.
    validation = sorted(name for name in reference[-1] if name.startswith("val/"))
    assert len(validation) == 2 + 3 * 6  # overall loss and bpb, then 3 per language
    assert sorted(name for name in parallel[-1] if name.startswith("val/")) == validation
    for name in validation:
        assert parallel[-1][name] == pytest.approx(reference[-1][name], rel=1e-5), name


@pytest.mark.parametrize("processes, overrides", [
    (2, ["parallel.engine=zero3", "parallel.activation_checkpointing=full"]),
    (2, ["parallel.engine=pipeline", "parallel.pipeline_stages=2", "train.grad_accum_steps=2",
         "parallel.activation_checkpointing=selective"]),
], ids=["zero3", "pipeline"])
def test_engine_resumes_with_bitwise_identical_losses(dataset, tmp_path, processes, overrides):
    common = [*TINY, *overrides, f"data.dataset={dataset}", "train.max_steps=8",
              "checkpoint.interval=100"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    ok(pretrain("train", *common, f"run.dir={straight}", cwd=tmp_path, processes=processes))
    ok(pretrain("train", *common, f"run.dir={split}", "train.stop_at_step=4", cwd=tmp_path,
                processes=processes))
    folder, meta = find_resumable(split)
    assert meta["step"] == 4 and meta["world_size"] == processes
    resumed = ok(pretrain("train", *common, f"run.dir={split}", cwd=tmp_path,
                          processes=processes))
    assert "resumed from step 4" in resumed.stdout
    assert losses(split) == losses(straight)  # exact float equality, every step
