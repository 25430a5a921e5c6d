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
from tests.cli_runs import (
    TINY,
    catches,
    command,
    environment,
    losses,
    ok,
    prepare_dataset,
    pretrain,
)

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


def test_ctrl_c_saves_at_the_next_step_and_twice_stops_at_once(dataset, straight, tmp_path):
    """Issue 18.17: Ctrl-C printed KeyboardInterrupt tracebacks and lost the steps since the last
    checkpoint. Now the first SIGINT is a stop signal like SIGTERM; a second one stops at once
    with one line and status 130."""
    run_dir = tmp_path / "run"
    args = ["train", *common(dataset), f"run.dir={run_dir}"]
    process = start(*args, cwd=tmp_path, env={"SIYADA_FAULT": "hang@3"})
    wait_for_step(process, run_dir, 3)
    os.kill(process.pid, signal.SIGINT)
    output = process.communicate(timeout=300)[0]
    assert process.returncode == REQUEUE_EXIT_CODE, output[-3000:]
    assert "[requeue] SIGINT received: saved step 3" in output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output
    resumed = ok(pretrain(*args, cwd=tmp_path))
    assert "resumed from step 3" in resumed.stdout and losses(run_dir) == straight[1]

    # Twice, while it starts (seconds of imports): the second stops it there.
    process = start("train", *common(dataset), f"run.dir={tmp_path / 'again'}", cwd=tmp_path)
    deadline = time.monotonic() + 60
    # `pretrain train` holds the stop signals from line one (Python catches SIGINT from its own
    # start, so look at SIGUSR1, held with it).
    while not catches(process.pid, signal.SIGUSR1):
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGINT)
    assert process.stdout is not None
    for line in iter(process.stdout.readline, ""):
        if "SIGINT received" in line:  # the first is recorded: now the second
            break
    else:
        raise AssertionError("the first SIGINT was never acknowledged")
    os.kill(process.pid, signal.SIGINT)
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 130, output[-3000:]
    assert "pretrain train: interrupted" in output and "Traceback" not in output


def test_a_second_process_on_a_busy_run_directory_is_refused(dataset, straight, tmp_path):
    """Issue 18.7: two `pretrain train` on one run directory both ran to the end and
    interleaved metrics.jsonl. The second now refuses in one line naming the holder; once the
    holder is killed (-9: no cleanup), its lock does not block the restart."""
    run_dir = tmp_path / "run"
    args = ["train", *common(dataset), f"run.dir={run_dir}"]
    holder = start(*args, cwd=tmp_path, env={"SIYADA_FAULT": "hang@7"})
    wait_for_step(holder, run_dir, 7)
    second = pretrain(*args, cwd=tmp_path)
    assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
    error = next(line for line in second.stderr.splitlines() if "error:" in line)
    assert f"already being trained by pid {holder.pid} on" in error
    assert len(losses(run_dir)) == 7  # the second wrote nothing
    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait()
    resumed = ok(pretrain(*args, cwd=tmp_path))
    assert "resumed from step 5" in resumed.stdout
    assert losses(run_dir) == straight[1]


def test_ranks_do_not_outlive_a_killed_torchrun(dataset, tmp_path):
    """Issue 18.5: SIGUSR1 sent to torchrun kills the launcher (its default action), and the
    ranks trained on as orphans. Now they get SIGTERM when it dies: they save where they are
    and stop."""
    run_dir = tmp_path / "run"
    process = start("train", *common(dataset), f"run.dir={run_dir}", cwd=tmp_path, processes=2,
                    env={"SIYADA_FAULT": "hang@7"})
    wait_for_step(process, run_dir, 7)
    ranks = ranks_of(process, 2)
    process.send_signal(signal.SIGUSR1)  # the launcher only
    process.communicate(timeout=120)
    deadline = time.monotonic() + 180
    while any(Path(f"/proc/{rank}").exists() and "zombie" not in
              Path(f"/proc/{rank}/status").read_text() for rank in ranks):
        assert time.monotonic() < deadline, "the ranks outlived their launcher"
        time.sleep(0.1)
    folder, meta = find_resumable(run_dir)
    assert meta["step"] == 7  # saved where they were stopped


@contextlib.contextmanager
def small_filesystem(folder: Path, size: str):
    """A tmpfs of `size` at `folder` (root only: skips elsewhere)."""
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_a_full_disk_is_one_line_and_leaves_no_partial_checkpoint(dataset, tmp_path):
    """Issue 18.6: a full disk during a save printed C++ iostream tracebacks that never said
    "disk full" and left the half-written folder. A checkpoint of the tiny run takes ~2 MB:
    with 3 MB, step 5 fits and step 10 does not; with 1 MB, the run refuses to start."""
    with small_filesystem(tmp_path / "small", "3m") as small:
        run_dir = small / "run"
        failed = pretrain("train", *common(dataset), f"run.dir={run_dir}", cwd=tmp_path)
        assert failed.returncode == 2, failed.stdout[-2000:] + failed.stderr[-2000:]
        assert "Traceback" not in failed.stderr and "iostream" not in failed.stderr
        error = next(line for line in failed.stderr.splitlines() if "error:" in line)
        assert "step_00000010: saving it failed: the filesystem at" in error
        assert f"{small} is full" in error and "step_00000005 is intact" in error
        assert not (checkpoint_root(run_dir) / "step_00000010").exists()
        assert find_resumable(run_dir)[1]["step"] == 5
    with small_filesystem(tmp_path / "tiny", "1m") as tiny:
        refused = pretrain("train", *common(dataset), f"run.dir={tiny / 'run'}", cwd=tmp_path)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        assert "free, and a checkpoint of this run takes about 1.9 MiB" in refused.stderr


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


def flip_a_bit(path: Path) -> None:
    """Same size, one bit off in the middle: only the sha256 can tell."""
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 1
    path.write_bytes(bytes(content))


@pytest.mark.parametrize("processes", [1, 2])
def test_a_silently_damaged_checkpoint_is_caught_by_default(dataset, straight, tmp_path,
                                                            processes):
    """Issue 18.2: with the default settings a flipped bit in an optimizer shard is found on
    resume (the ranks split the hashing), the run resumes from the checkpoint before and goes on
    exactly as if nothing had happened, and the damaged one is set aside, not deleted."""
    run_dir = tmp_path / "run"
    args = ["train", *common(dataset), f"run.dir={run_dir}"]
    ok(pretrain(*args, "train.stop_at_step=10", cwd=tmp_path, processes=processes))
    newest = checkpoint_root(run_dir) / "step_00000010"
    flip_a_bit(max(newest.glob("*optim_states.pt"), key=lambda path: path.stat().st_size))
    result = ok(pretrain(*args, cwd=tmp_path, processes=processes))
    assert "does not match its sha256" in result.stdout
    assert "moved to step_00000010.broken" in result.stdout
    assert "resumed from step 5" in result.stdout
    assert losses(run_dir) == straight[processes]
    assert not RunDir(run_dir).guard.exists()  # no batch was blamed
    assert (checkpoint_root(run_dir) / "step_00000010.broken" / "BROKEN.txt").is_file()


def test_a_checkpoint_that_does_not_load_is_set_aside_and_the_restart_resumes_before_it(
        dataset, straight, tmp_path):
    """Issue 18.15: with checksums off, a damaged model_states.pt (same size) gave a raw
    traceback. Now every rank agrees it failed, it is set aside, the run exits for a restart
    (status 75), and the restart resumes from the checkpoint before it."""
    run_dir = tmp_path / "run"
    args = ["train", *common(dataset), f"run.dir={run_dir}", "checkpoint.verify_checksums=false"]
    ok(pretrain(*args, "train.stop_at_step=10", cwd=tmp_path))
    victim = next((checkpoint_root(run_dir) / "step_00000010").rglob("*model_states.pt"))
    content = victim.read_bytes()
    victim.write_bytes(b"\xff" * 64 + content[64:])  # its zip header: unreadable, same size
    failed = pretrain(*args, cwd=tmp_path)
    assert failed.returncode == REQUEUE_EXIT_CODE, failed.stdout[-2000:] + failed.stderr[-2000:]
    assert "cannot be loaded" in failed.stdout and "moved it to step_00000010.broken" in \
        failed.stdout
    assert "Traceback" not in failed.stderr
    resumed = ok(pretrain(*args, cwd=tmp_path))
    assert "resumed from step 5" in resumed.stdout
    assert losses(run_dir) == straight[1]


def test_a_rollback_never_returns_into_a_damaged_checkpoint(dataset, tmp_path):
    """Issue 18.2: the checkpoint a NaN step rolls back to is hashed first. Here step 10's is
    damaged after the run resumed from it, so the rollback goes to step 5; replaying 6-12 gives
    exactly the run that rolled back to an intact step 10 and skipped the same batch."""
    clean, damaged = tmp_path / "clean", tmp_path / "damaged"
    ok(pretrain("train", *common(dataset), f"run.dir={clean}", cwd=tmp_path,
                env={"SIYADA_FAULT": "nan@13"}))
    args = ["train", *common(dataset), f"run.dir={damaged}"]
    ok(pretrain(*args, "train.stop_at_step=10", cwd=tmp_path))
    result = ok(pretrain(*args, cwd=tmp_path, env={"SIYADA_FAULT": "flip@12,nan@13"}))
    assert "moved to step_00000010.broken" in result.stdout
    assert "rolled back to step_00000005" in result.stdout
    assert json.loads(RunDir(damaged).guard.read_text())["skipped_batches"] == [13]
    assert losses(damaged) == losses(clean)


def test_when_no_checkpoint_can_be_trusted_the_run_stops_instead_of_starting_over(dataset,
                                                                                  straight,
                                                                                  tmp_path):
    """Issue 18.3: every committed checkpoint broken is one clear line and exit 2, with the
    history kept; checkpoint.resume=false starts over on purpose."""
    run_dir = tmp_path / "run"
    args = ["train", *common(dataset), f"run.dir={run_dir}"]
    ok(pretrain(*args, "train.stop_at_step=10", cwd=tmp_path))
    for step in (5, 10):
        victim = max((checkpoint_root(run_dir) / f"step_{step:08d}").glob("*.pt"),
                     key=lambda path: path.stat().st_size)
        victim.write_bytes(victim.read_bytes()[:100])
    history = RunDir(run_dir).metrics.read_text()
    refused = pretrain(*args, cwd=tmp_path)
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    assert "Traceback" not in refused.stderr
    error = next(line for line in refused.stderr.splitlines() if "error:" in line)
    assert "no checkpoint can be trusted" in error and "checkpoint.resume=false" in error
    assert "step_00000010 (file" in error and "step_00000005 (file" in error
    assert RunDir(run_dir).metrics.read_text() == history
    again = ok(pretrain(*args, "checkpoint.resume=false", cwd=tmp_path))
    assert "resumed from" not in again.stdout
    assert losses(run_dir) == straight[1]  # from step 0, deliberately


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
    # an elastic job's: train.global_batch_size set, the accumulation derived on each start
    ((2, ["train.global_batch_size=16"]), (1, ["train.global_batch_size=16"])),
], ids=["zero3-2dp-to-1", "pipeline-2pp-to-1", "global-batch-2dp-to-1"])
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
    if "train.global_batch_size=16" in new_layout:
        assert ("[parallel] global batch 16 sequences = 1 data-parallel rank(s) x micro batch 8 "
                "x 2 accumulation step(s)") in resumed.stdout
    expected, curve = losses(straight_dir), losses(switched)
    assert curve[:10] == expected[:10]
    assert curve[10:] == pytest.approx(expected[10:], rel=1e-6)
    assert final_loader_state(switched) == final_loader_state(straight_dir)
