"""Checkpoints that survive kill -9, signals, corruption, crashes mid-save and divergence.

Every run is the real CLI in its own processes (one, or two gloo ranks under torchrun), killed
and restarted the way a cluster does it. "Bitwise" means the logged losses are equal floats.
"""

import contextlib
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pretrain.checkpoint.store import LATEST, META, checkpoint_root, find_resumable, verify
from pretrain.runs import RunDir
from pretrain.slurm.signals import REQUEUE_EXIT_CODE
from pretrain.train.faults import CRASH_EXIT_CODE
from pretrain.train.metrics import read_metrics
from tests.cli_runs import TINY, command, environment, losses, ok, prepare_dataset, pretrain

pytestmark = pytest.mark.e2e

STEPS = 20
INTERVAL = 5


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return prepare_dataset(tmp_path_factory.mktemp("prepared"))


@pytest.fixture(scope="module")
def straight(dataset, tmp_path_factory) -> dict[int, list[float]]:
    """Uninterrupted runs (1 and 2 ranks): the curves the interrupted ones must reproduce."""
    curves = {}
    for processes in (1, 2):
        root = tmp_path_factory.mktemp(f"straight{processes}")
        ok(pretrain("train", *common(dataset), f"run.dir={root / 'run'}", cwd=root,
                    processes=processes))
        curves[processes] = losses(root / "run")
    return curves


def common(dataset: Path) -> list[str]:
    return [*TINY, f"data.dataset={dataset}", f"train.max_steps={STEPS}",
            f"checkpoint.interval={INTERVAL}", "guard.spike_factor=0"]


def start(*args: str, cwd: Path, processes: int = 1, env: dict | None = None) -> subprocess.Popen:
    """Like cli_runs.pretrain, but in the background and in its own process group."""
    return subprocess.Popen(command(*args, processes=processes), cwd=cwd, env=environment(env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def wait_for_step(process: subprocess.Popen, run_dir: Path, step: int) -> None:
    deadline = time.monotonic() + 300
    while len(read_metrics(run_dir / "metrics.jsonl")) < step:
        assert process.poll() is None, process.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "the run did not reach the step in time"
        time.sleep(0.05)


def rank_of(pid: int) -> int:
    """The RANK torchrun gave a worker process."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return int(next(item for item in environ if item.startswith(b"RANK="))[5:])


def ranks_of(process: subprocess.Popen, processes: int) -> list[int]:
    """PIDs of the training processes: the process itself, or torchrun's workers."""
    if processes == 1:
        return [process.pid]
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    while len(pids := children.read_text().split()) < processes:
        time.sleep(0.05)
    return [int(pid) for pid in pids]


def test_kill_minus_9_mid_run_then_restart_continues_bitwise(dataset, straight, tmp_path):
    run_dir = tmp_path / "run"
    args = ["train", *common(dataset), f"run.dir={run_dir}"]
    kill_after = random.choice([s for s in range(INTERVAL + 2, STEPS - 2) if s % INTERVAL])
    # The run stalls after that step (SIYADA_FAULT=hang), so the kill lands there however
    # slow or fast the machine is.
    process = start(*args, cwd=tmp_path, processes=2,
                    env={"SIYADA_FAULT": f"hang@{kill_after}"})
    wait_for_step(process, run_dir, kill_after)
    ranks = ranks_of(process, 2)
    os.killpg(process.pid, signal.SIGKILL)  # torchrun and both ranks, no cleanup at all
    for rank in ranks:  # torchrun may start its workers in sessions of their own
        with contextlib.suppress(ProcessLookupError):
            os.kill(rank, signal.SIGKILL)
    process.wait()
    assert len(losses(run_dir)) == kill_after
    resumed = ok(pretrain(*args, cwd=tmp_path, processes=2))
    assert "resumed from step" in resumed.stdout
    assert losses(run_dir) == straight[2], f"killed after step {kill_after}"


def test_sigusr1_saves_exits_for_requeue_and_continues_bitwise(dataset, straight, tmp_path):
    run_dir = tmp_path / "run"
    args = ["train", *common(dataset), f"run.dir={run_dir}"]
    # Rank 0 stalls after step 7 until signalled; rank 1 waits for it in the next collective.
    process = start(*args, cwd=tmp_path, processes=2, env={"SIYADA_FAULT": "hang@7"})
    wait_for_step(process, run_dir, 7)
    rank0 = min(ranks_of(process, 2), key=lambda pid: rank_of(pid))
    os.kill(rank0, signal.SIGUSR1)  # one rank only: the other must stop with it
    os.kill(rank0, signal.SIGTERM)  # a second signal while it saves changes nothing
    output = process.communicate(timeout=300)[0]
    # torchrun reports the first rank to leave (and then stops the other itself).
    assert f"exitcode  : {REQUEUE_EXIT_CODE}" in output, output[-3000:]
    assert "[requeue] SIGUSR1 received: saved step 7" in output
    folder, meta = find_resumable(run_dir)
    assert meta["step"] == len(losses(run_dir)) == 7  # saved where it stopped, off-interval
    verify(folder, checksums=True)
    resumed = ok(pretrain(*args, cwd=tmp_path, processes=2))
    assert f"resumed from step {meta['step']}" in resumed.stdout
    assert losses(run_dir) == straight[2]


def test_single_process_requeue_status(dataset, tmp_path):
    run_dir = tmp_path / "run"
    process = start("train", *common(dataset), f"run.dir={run_dir}", cwd=tmp_path,
                    env={"SIYADA_FAULT": "hang@3"})
    wait_for_step(process, run_dir, 3)
    os.kill(process.pid, signal.SIGUSR1)
    process.communicate(timeout=300)
    assert process.returncode == REQUEUE_EXIT_CODE


def test_crash_between_files_of_a_save_keeps_the_previous_checkpoint(dataset, straight,
                                                                       tmp_path):
    run_dir = tmp_path / "run"
    args = ["train", *common(dataset), f"run.dir={run_dir}"]
    crashed = pretrain(*args, cwd=tmp_path, env={"SIYADA_FAULT": "save@10"})
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stdout[-2000:]
    half_written = checkpoint_root(run_dir) / "step_00000010"
    assert half_written.is_dir() and not (half_written / META).exists()
    assert (checkpoint_root(run_dir) / LATEST).read_text().strip() == "step_00000005"
    resumed = ok(pretrain(*args, cwd=tmp_path))
    assert "skipping" in resumed.stdout and "step_00000010: no meta.json" in resumed.stdout
    assert "resumed from step 5" in resumed.stdout
    assert losses(run_dir) == straight[1]


@pytest.mark.parametrize("damage", ["truncate", "delete", "flip a byte"])
def test_a_damaged_newest_checkpoint_is_reported_and_skipped(dataset, tmp_path, damage):
    run_dir = tmp_path / "run"
    args = ["train", *common(dataset), f"run.dir={run_dir}", "checkpoint.verify_checksums=true"]
    ok(pretrain(*args, "train.stop_at_step=10", cwd=tmp_path))
    newest = checkpoint_root(run_dir) / "step_00000010"
    victim = max(newest.rglob("*.pt"), key=lambda path: path.stat().st_size)
    content = victim.read_bytes()
    if damage == "truncate":
        victim.write_bytes(content[:100])
    elif damage == "delete":
        victim.unlink()
    else:  # same size, one bit off: only the checksum can tell
        victim.write_bytes(content[:-1] + bytes([content[-1] ^ 1]))
    result = ok(pretrain(*args, cwd=tmp_path))
    assert f"skipping {newest}" in result.stdout
    assert "resumed from step 5" in result.stdout


def test_a_nan_step_is_rolled_back_and_its_batch_skipped(dataset, straight, tmp_path):
    run_dir = tmp_path / "run"
    result = ok(pretrain("train", *common(dataset), f"run.dir={run_dir}", cwd=tmp_path,
                         env={"SIYADA_FAULT": "nan@7"}))
    assert "[guard] step 7: non-finite loss" in result.stdout
    assert "rolled back to step_00000005" in result.stdout
    record = json.loads(RunDir(run_dir).guard.read_text())
    assert record["skipped_batches"] == [7]
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [row["step"] for row in rows] == list(range(1, STEPS + 1))  # one continuous curve
    curve = [row["loss"] for row in rows]
    assert curve[:6] == straight[1][:6]  # before the bad batch: the same run
    assert all(loss == loss for loss in curve) and curve[-1] < curve[0] - 0.1
    assert rows[-1]["skipped_batches"] == 1
    # Batch 7 was skipped, so step 7 onwards trained on batches 8, 9, ...: not the same curve.
    assert curve[6] != straight[1][6]


def test_retention_keeps_the_last_k_and_every_nth_and_mirrors(dataset, tmp_path):
    run_dir, mirror = tmp_path / "run", tmp_path / "mirror"
    ok(pretrain("train", *common(dataset), f"run.dir={run_dir}", "checkpoint.keep_last=2",
                "checkpoint.keep_every=10", f"checkpoint.mirror_dir={mirror}", cwd=tmp_path))
    kept = ["step_00000010", "step_00000015", "step_00000020"]
    assert sorted(p.name for p in checkpoint_root(run_dir).glob("step_*")) == kept
    assert sorted(p.name for p in mirror.glob("step_*")) == kept
    assert (mirror / LATEST).read_text().strip() == "step_00000020"
    verify(mirror / "step_00000020", checksums=True)


def test_a_wsd_branch_from_the_main_runs_checkpoint_equals_a_run_from_scratch(dataset,
                                                                              tmp_path):
    # One WSD run of 20 steps decays over its last 5; a branch of 12 steps decays over its
    # last 3, from step 9 on: it starts from the main run's step-9 checkpoint (kept by
    # save_at_steps despite keep_last=1), and must be bitwise the 12-step run from scratch.
    wsd = [*TINY, f"data.dataset={dataset}", "optim.schedule=wsd", "optim.decay_fraction=0.25",
           "checkpoint.interval=4", "checkpoint.keep_last=1", "guard.spike_factor=0"]
    main, branch, scratch = (tmp_path / name for name in ("main", "branch", "scratch"))
    ok(pretrain("train", *wsd, "train.max_steps=20", f"run.dir={main}",
                "checkpoint.save_at_steps=[9]", cwd=tmp_path))
    assert sorted(p.name for p in checkpoint_root(main).glob("step_*")) == [
        "step_00000009", "step_00000020"]
    result = ok(pretrain("train", *wsd, "train.max_steps=12", f"run.dir={branch}",
                         f"checkpoint.init_from={checkpoint_root(main) / 'step_00000009'}",
                         cwd=tmp_path))
    assert "has no checkpoint yet: starting from" in result.stdout
    ok(pretrain("train", *wsd, "train.max_steps=12", f"run.dir={scratch}", cwd=tmp_path))
    assert losses(main)[:9] == losses(scratch)[:9]
    assert losses(branch) == losses(scratch)[9:]
    # The branch's own checkpoints now win over init_from: a second start resumes from them.
    again = ok(pretrain("train", *wsd, "train.max_steps=12", f"run.dir={branch}",
                        f"checkpoint.init_from={checkpoint_root(main) / 'step_00000009'}",
                        cwd=tmp_path))
    assert "already reached step 12" in again.stdout


def test_init_from_a_missing_checkpoint_is_one_clear_error(dataset, tmp_path):
    missing = tmp_path / "nowhere" / "step_00000009"
    result = pretrain("train", *common(dataset), f"run.dir={tmp_path / 'run'}",
                      f"checkpoint.init_from={missing}", cwd=tmp_path)
    assert result.returncode == 2
    assert f"checkpoint.init_from: {missing}: no meta.json" in result.stderr


@pytest.mark.parametrize("change, message", [
    ("data.mixture.temperature=2.0", "mixture.temperature: 1.0 -> 2.0"),
    ("train.micro_batch_size=4", "global_batch: 8 -> 4"),
])
def test_a_checkpoint_of_other_settings_is_refused_unless_allowed(dataset, tmp_path, change,
                                                                  message):
    run_dir = tmp_path / "run"
    args = ["train", *common(dataset), f"run.dir={run_dir}"]
    ok(pretrain(*args, "train.stop_at_step=5", cwd=tmp_path))
    refused = pretrain(*args, change, cwd=tmp_path)
    assert refused.returncode == 2 and message in refused.stderr
    assert "checkpoint.allow_config_change=true" in refused.stderr
    allowed = ok(pretrain(*args, change, "checkpoint.allow_config_change=true",
                          "train.stop_at_step=6", cwd=tmp_path))
    assert "resumed from step 5" in allowed.stdout and message in allowed.stdout


def test_another_engine_is_refused_clearly(dataset, tmp_path):
    run_dir = tmp_path / "run"
    args = ["train", *common(dataset), f"run.dir={run_dir}"]
    ok(pretrain(*args, "train.stop_at_step=5", cwd=tmp_path))
    refused = pretrain(*args, "parallel.engine=pipeline", cwd=tmp_path)
    assert refused.returncode == 2
    assert "saved with parallel engine zero3, this run has pipeline" in refused.stderr


def final_loader_state(run_dir: Path) -> dict:
    return find_resumable(run_dir)[1]["client_state"]["loader"]


@pytest.mark.parametrize("before, after", [
    # ZeRO-3 on 2 ranks -> 1 rank with doubled accumulation (the same 16-sequence global batch)
    ((2, ["train.grad_accum_steps=1"]), (1, ["train.grad_accum_steps=2"])),
    # a 2-stage pipeline -> 1 stage, same global batch
    ((2, ["parallel.engine=pipeline", "parallel.pipeline_stages=2", "train.grad_accum_steps=2"]),
     (1, ["parallel.engine=pipeline", "train.grad_accum_steps=2"])),
], ids=["zero3-2dp-to-1", "pipeline-2pp-to-1"])
def test_resume_on_another_layout_reshards_and_keeps_the_curve(dataset, tmp_path, before, after):
    """The state comes back exactly (reshard.py); the losses after the switch agree with an
    uninterrupted run to 1e-6 relative, the bound of tests/parallel/test_distributed.py, because
    the new layout sums gradients in another order. The data order is the same: the loader state at
    the end equals the uninterrupted run's."""
    (processes, layout), (new_processes, new_layout) = before, after
    base = [*TINY, f"data.dataset={dataset}", f"train.max_steps={STEPS}",
            f"checkpoint.interval={INTERVAL}", "guard.spike_factor=0"]
    straight_dir, switched = tmp_path / "straight", tmp_path / "switched"
    ok(pretrain("train", *base, *layout, f"run.dir={straight_dir}", cwd=tmp_path,
                processes=processes))
    ok(pretrain("train", *base, *layout, f"run.dir={switched}", "train.stop_at_step=10",
                cwd=tmp_path, processes=processes))
    resumed = ok(pretrain("train", *base, *new_layout, f"run.dir={switched}", cwd=tmp_path,
                          processes=new_processes))
    assert "through a universal checkpoint" in resumed.stdout
    assert "resumed from step 10" in resumed.stdout
    expected, curve = losses(straight_dir), losses(switched)
    assert curve[:10] == expected[:10]
    assert curve[10:] == pytest.approx(expected[10:], rel=1e-6)
    assert final_loader_state(switched) == final_loader_state(straight_dir)
