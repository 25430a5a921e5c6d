"""End-to-end training through the real CLI and a real DeepSpeed ZeRO-3 engine (CPU, gloo).

Each run is its own process, as a restarted job would be.
"""

import contextlib
import json
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pretrain.checkpoint.store import LATEST, checkpoint_root, find_resumable
from pretrain.slurm.signals import HANG_EXIT_CODE, REQUEUE_EXIT_CODE
from pretrain.slurm.submit import RANK_LAUNCHER
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
    signal_bit,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """The sample corpus prepared once by `pretrain prepare`, shared by the runs below."""
    return prepare_dataset(tmp_path_factory.mktemp("prepared"))


def test_loss_falls_and_the_run_directory_is_complete(dataset, tmp_path):
    run_dir = tmp_path / "run"
    result = ok(pretrain("train", *TINY, f"data.dataset={dataset}", f"run.dir={run_dir}",
                         "train.max_steps=40", "checkpoint.interval=20", cwd=tmp_path))
    curve = losses(run_dir)
    assert len(curve) == 40
    first, last = sum(curve[:5]) / 5, sum(curve[-5:]) / 5
    assert last < first - 1.0, f"loss did not fall enough: {first:.3f} -> {last:.3f}"
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "tokens_seen"} <= rows[-1].keys()
    assert rows[-1]["tokens_seen"] == 40 * 8 * 64

    ds_config = json.loads((run_dir / "deepspeed_config.json").read_text())
    assert ds_config["zero_optimization"]["stage"] == 3
    assert ds_config["train_micro_batch_size_per_gpu"] == 8
    assert "n_layers: 2" in (run_dir / "config.yaml").read_text()
    assert (run_dir / "loss.png").stat().st_size > 0
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (checkpoint_root(run_dir) / LATEST).read_text().strip() == "step_00000040"
    assert sorted(p.name for p in checkpoint_root(run_dir).glob("step_*")) == [
        "step_00000020", "step_00000040"]
    for line in ("checkpoint:", "metrics:", "loss curve:"):
        assert line in result.stdout


def test_resume_after_a_stop_continues_the_same_loss_curve(dataset, tmp_path):
    common = [*TINY, f"data.dataset={dataset}", "train.max_steps=30", "checkpoint.interval=10"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    ok(pretrain("train", *common, f"run.dir={straight}", cwd=tmp_path))
    ok(pretrain("train", *common, f"run.dir={split}", "train.stop_at_step=15", cwd=tmp_path))
    assert len(losses(split)) == 15
    folder, meta = find_resumable(split)
    assert folder.name == "step_00000015" and meta["step"] == 15
    resumed = ok(pretrain("train", *common, f"run.dir={split}", cwd=tmp_path))
    assert "resumed from step 15" in resumed.stdout
    # Same weights, optimizer, schedule, RNG and data position: the curve continues exactly.
    assert losses(split) == losses(straight)
    finished = ok(pretrain("train", *common, f"run.dir={split}", cwd=tmp_path))
    assert "already reached step 30; nothing to do" in finished.stdout
    assert losses(split) == losses(straight)


def test_a_broken_latest_checkpoint_falls_back_to_the_previous_one(dataset, tmp_path):
    run_dir = tmp_path / "run"
    common = [*TINY, f"data.dataset={dataset}", f"run.dir={run_dir}", "train.max_steps=10",
              "checkpoint.interval=5"]
    ok(pretrain("train", *common, "train.stop_at_step=10", cwd=tmp_path))
    newest = checkpoint_root(run_dir) / "step_00000010"
    victim = max((p for p in newest.rglob("*.pt")), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[:100])  # a truncated write, as after a full disk
    result = ok(pretrain("train", *common, cwd=tmp_path))
    assert "skipping" in result.stdout and "step_00000010" in result.stdout
    assert "resumed from step 5" in result.stdout


def test_demo_runs_from_any_directory_with_the_bundled_corpus(tmp_path):
    result = ok(pretrain("train", "train.max_steps=3", "logging.progress_bar=false",
                         "checkpoint.interval=3", cwd=tmp_path))
    run_dir = tmp_path / "runs" / "demo"
    assert (run_dir / "data" / "manifest.json").is_file()
    assert len(losses(run_dir)) >= 1
    assert str(Path("runs") / "demo" / "loss.png") in result.stdout


@pytest.mark.parametrize("args, message", [
    (["train", "model.n_head=4"], "unknown config key 'model.n_head'"),
    (["train", "--config", "nowhere.yaml"], "config file not found"),
    (["train", "data.corpus=/no/such/corpus"], "/no/such/corpus"),
])
def test_bad_input_is_one_clear_line(tmp_path, args, message):
    result = pretrain(*args, "train.max_steps=1", cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


TWO_RANKS = [*TINY, "train.max_steps=10"]


@pytest.fixture(scope="module")
def two_ranks(dataset, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess, set[Path]]:
    """A 2-rank run of 10 steps, uninterrupted: its directory, its process, and the shared
    memory files that were there before it."""
    root = tmp_path_factory.mktemp("two_ranks")
    shared_memory = set(Path("/dev/shm").glob("deepspeed_allreduce_buffer_*"))
    result = ok(pretrain("train", *TWO_RANKS, f"data.dataset={dataset}", f"run.dir={root / 'run'}",
                         "checkpoint.interval=10", cwd=root, processes=2))
    return root / "run", result, shared_memory


@pytest.mark.distributed
def test_two_ranks_under_torchrun_share_one_run(two_ranks):
    run_dir, result, shared_memory = two_ranks
    # DeepSpeed's CPU all-reduce buffers (66 MB each, in RAM) do not outlive the run.
    assert set(Path("/dev/shm").glob("deepspeed_allreduce_buffer_*")) <= shared_memory
    assert "2 rank(s)" in result.stdout
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert len(rows) == 10 and rows[-1]["tokens_seen"] == 10 * 8 * 64 * 2
    folder, meta = find_resumable(run_dir)
    assert meta["world_size"] == 2
    assert {"rng_rank00000.pt", "rng_rank00001.pt"} <= set(meta["files"])
    assert len(list(folder.glob("zero_pp_rank_*_optim_states.pt"))) == 2


@pytest.mark.distributed
def test_a_stuck_rank_is_found_by_the_watchdog_and_the_resumed_run_loses_nothing(
        dataset, tmp_path, two_ranks):
    # Rank 0 stalls after step 6 and rank 1 waits for it in the next collective, as a rank
    # whose peer went silent would (no reset, no error): without the watchdog both would sit
    # there for the process group's 30-minute timeout.
    run_dir = tmp_path / "run"
    args = ["train", *TWO_RANKS, f"data.dataset={dataset}", f"run.dir={run_dir}",
            "checkpoint.interval=4", "train.hang_timeout=3"]
    started = time.monotonic()
    hung = pretrain(*args, cwd=tmp_path, processes=2, env={"SIYADA_FAULT": "hang@6"})
    took = time.monotonic() - started
    assert hung.returncode != 0, hung.stdout[-2000:] + hung.stderr[-2000:]
    # Both watchdogs run out within milliseconds of each other, but the first rank to exit
    # makes torchrun stop the other, which may then go before printing (CI saw it): at least
    # one rank must say so, and whoever does says it right.
    lines = [line for line in hung.stderr.splitlines() if line.startswith("[watchdog] rank ")]
    assert lines, hung.stderr[-3000:]
    for line in lines:
        assert "at step 6 (in a step; allowed 3 s = max(train.hang_timeout=3" in line
        assert f"exiting with status {HANG_EXIT_CODE}" in line
    assert f"exitcode  : {HANG_EXIT_CODE}" in hung.stderr  # torchrun's summary of the failure
    assert took < 120  # seconds, where the process group alone would have waited 30 minutes
    assert len(losses(run_dir)) == 6
    # The run resumes from step 4 (the hang is once per run) and ends where the straight run
    # ended, bitwise: steps 5 and 6, trained twice, come out the same.
    resumed = ok(pretrain(*args, cwd=tmp_path, processes=2, env={"SIYADA_FAULT": "hang@6"}))
    assert "[checkpoint] resumed from step 4" in resumed.stdout
    assert losses(run_dir) == losses(two_ranks[0])


def test_both_engines_train_alike_with_our_triton_kernels(dataset, tmp_path):
    # On CPU the kernels run through the Triton interpreter (slow): a few small steps.
    common = [*TINY, f"data.dataset={dataset}", "train.max_steps=3", "train.micro_batch_size=2",
              "eval.enabled=false"]
    kernels = ["model.attention_impl=triton", "model.norm_impl=triton"]
    runs = {
        "pytorch": ["model.attention_impl=eager", "model.norm_impl=torch"],
        "zero3": kernels,
        "pipeline": [*kernels, "parallel.engine=pipeline", "parallel.pipeline_stages=1"],
    }
    curves = {}
    for name, overrides in runs.items():
        ok(pretrain("train", *common, *overrides, f"run.dir={tmp_path / name}", cwd=tmp_path))
        curves[name] = losses(tmp_path / name)
    assert len(curves["pytorch"]) == 3
    for name in ("zero3", "pipeline"):
        assert curves[name] == pytest.approx(curves["pytorch"], rel=1e-5), name


def test_a_warning_during_start_up_saves_at_the_first_step(dataset, tmp_path):
    # Slurm's warning can come while a rank is still importing torch and DeepSpeed, before the
    # loop's StopWatch exists: the rank must save and ask for a requeue, not die of SIGUSR1.
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        command("train", *TINY, f"data.dataset={dataset}", f"run.dir={run_dir}",
                "train.max_steps=20"),
        cwd=tmp_path, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    deadline = time.monotonic() + 30
    while not catches(process.pid, signal.SIGUSR1):  # the first thing `pretrain train` does
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.01)
    process.send_signal(signal.SIGUSR1)
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == REQUEUE_EXIT_CODE, stdout[-2000:] + stderr[-2000:]
    assert "SIGUSR1 received while starting" in stderr
    folder, meta = find_resumable(run_dir)
    assert meta["step"] == 1 and len(losses(run_dir)) == 1


def hammer(process: subprocess.Popen, sig: signal.Signals, every_s: float) -> threading.Thread:
    """Send `sig` to the process every `every_s` seconds until it exits: whatever moment is
    fragile, some signal lands in it."""
    def send() -> None:
        while process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)
            time.sleep(every_s)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def test_a_finished_run_exits_0_whatever_arrives_after_it(dataset, tmp_path):
    """Issue 18.4: stop signals after `[done]` (the job's end, a late time-limit warning) are
    ignored until the process is gone. They used to kill it during interpreter shutdown, which
    puts back the default action of every signal with a Python handler (status 138)."""
    for attempt in range(3):
        run_dir = tmp_path / f"run{attempt}"
        process = subprocess.Popen(
            command("train", *TINY, f"data.dataset={dataset}", f"run.dir={run_dir}",
                    "train.max_steps=2", "eval.enabled=false"),
            cwd=tmp_path, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("[done]"):
                hammer(process, signal.SIGUSR1, every_s=0.001)
                break
        output = process.communicate(timeout=120)[0]
        assert process.returncode == 0, output[-2000:]


def test_the_rank_launcher_keeps_an_early_signal_from_killing_the_rank(tmp_path):
    """Issue 18.4: a signal in a rank's first milliseconds, before Python has a handler. Under
    the sbatch script's rank launcher it is ignored (the bad config then gives its status 2);
    without it the rank dies of the signal (the control)."""
    rank = [sys.executable, "-m", "pretrain", "train", "--config", str(tmp_path / "none.yaml")]
    launched = subprocess.Popen([*shlex.split(RANK_LAUNCHER), *rank], cwd=tmp_path,
                                env=environment(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not signal_bit(launched.pid, "SigIgn", signal.SIGUSR1):  # the launcher's first act
        assert time.monotonic() < deadline and launched.poll() is None
        time.sleep(0.0005)
    hammer(launched, signal.SIGUSR1, every_s=0.001)  # from then on, through Python's start
    stderr = launched.communicate(timeout=120)[1]
    assert launched.returncode == 2 and "config file not found" in stderr, stderr[-2000:]
    bare = subprocess.Popen(rank, cwd=tmp_path, env=environment(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    hammer(bare, signal.SIGUSR1, every_s=0.001)
    bare.communicate(timeout=120)
    assert bare.returncode == -signal.SIGUSR1  # the window the launcher closes


def test_no_progress_bar_goes_to_a_log_file(dataset, tmp_path):
    """Issue 18.9: with stdout and stderr a file or a pipe (a Slurm .out file), tqdm wrote a bar
    update per step (a carriage return, or here a whole line); the log gets the periodic log
    lines only."""
    result = ok(pretrain("train", *TINY, "logging.progress_bar=true", "logging.log_interval=2",
                         f"data.dataset={dataset}", f"run.dir={tmp_path / 'run'}",
                         "train.max_steps=6", "eval.enabled=false", cwd=tmp_path))
    assert "\r" not in result.stdout + result.stderr
    assert "it/s" not in result.stdout + result.stderr  # no bar, in any form
    assert "step 6/6" in result.stdout


@contextlib.contextmanager
def read_only(folder: Path):
    """`folder` read-only for everyone, root included (a read-only bind mount), if this machine
    lets us mount; otherwise as it is (the caller then checks that nothing changed)."""
    mounted = subprocess.run(["mount", "--bind", str(folder), str(folder)],
                             capture_output=True).returncode == 0
    try:
        if mounted:
            subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], check=True,
                           capture_output=True)
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=True, capture_output=True)


def test_a_finished_run_writes_nothing_when_asked_again(dataset, tmp_path):
    """Issue 18.16: `pretrain train` on a run that is done rewrote config.yaml first, so a
    read-only run directory gave a raw OSError; now nothing is built or written."""
    run_dir = tmp_path / "run"
    args = ("train", *TINY, f"data.dataset={dataset}", f"run.dir={run_dir}", "train.max_steps=3")
    ok(pretrain(*args, cwd=tmp_path))
    before = {path: (path.stat().st_mtime_ns, path.read_bytes())
              for path in run_dir.rglob("*") if path.is_file()}
    with read_only(run_dir):
        again = ok(pretrain(*args, cwd=tmp_path))
    assert "already reached step 3; nothing to do" in again.stdout
    assert "Traceback" not in again.stderr
    assert {path: (path.stat().st_mtime_ns, path.read_bytes())
            for path in run_dir.rglob("*") if path.is_file()} == before


def test_a_corrupt_dataset_is_named_before_training(dataset, tmp_path):
    """Issue 18.8: training checked shard sizes only. Now every file is hashed against the
    manifest once (the ranks split it; kept by size and mtime), a flipped byte names its shard,
    and a hand-edited tokenizer hash in the manifest is refused."""
    def run(data: Path, name: str) -> subprocess.CompletedProcess:
        return pretrain("train", *TINY, f"data.dataset={data}", f"run.dir={tmp_path / name}",
                        "train.max_steps=2", "eval.enabled=false", cwd=tmp_path)

    def copy(name: str) -> Path:  # without what other tests' runs recorded as verified
        return Path(shutil.copytree(dataset, tmp_path / name,
                                    ignore=shutil.ignore_patterns(".verified.json")))

    clean = copy("clean")
    first, second = ok(run(clean, "a")), ok(run(clean, "b"))
    assert "[data] verified" in first.stdout and "[data] verified" not in second.stdout

    flipped = copy("flipped")
    shard = max(flipped.rglob("shard.*.mds"), key=lambda path: path.stat().st_size)
    content = bytearray(shard.read_bytes())
    content[len(content) // 2] ^= 1
    shard.write_bytes(bytes(content))
    refused = run(flipped, "c")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"{shard}: dataset file does not match its sha256" in refused.stderr

    edited = copy("edited")
    manifest = json.loads((edited / "manifest.json").read_text())
    manifest["tokenizer"]["sha256"] = "0" * 64
    (edited / "manifest.json").write_text(json.dumps(manifest))
    refused = run(edited, "d")
    assert refused.returncode == 2 and "records tokenizer sha256 000000000000" in refused.stderr
