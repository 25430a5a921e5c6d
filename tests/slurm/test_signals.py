"""Stop signals and the Slurm end time: what the training loop asks at each step boundary."""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pretrain.slurm import signals
from pretrain.slurm.signals import (
    REQUEUE_EXIT_CODE,
    StopWatch,
    parse_squeue_end_time,
    slurm_job_end_time,
)
from tests.paths import REPO


@pytest.fixture(autouse=True)
def no_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests may themselves run inside a Slurm job; none of its variables may leak in."""
    for name in ("SLURM_JOB_END_TIME", "SLURM_JOB_ID", "SLURM_TIME_FORMAT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def watch() -> Iterator[StopWatch]:
    stop_watch = StopWatch(job_end_time=None)
    yield stop_watch
    stop_watch.restore()


def send(sig: signal.Signals, stop_watch: StopWatch) -> None:
    """Send `sig` to this process and wait until the handler has run."""
    expected = stop_watch.signal_count + 1
    os.kill(os.getpid(), sig)
    deadline = time.monotonic() + 5.0
    while stop_watch.signal_count < expected:  # normally handled before os.kill returns
        assert time.monotonic() < deadline, f"{sig.name} was not handled"
        time.sleep(0.001)


def fake_squeue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> Path:
    """Put an executable `squeue` shell script first on PATH; returns the file it logs calls to."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "squeue.log"
    script = bin_dir / "squeue"
    script.write_text("#!/bin/sh\n"
                      f'echo "$* SLURM_TIME_FORMAT=$SLURM_TIME_FORMAT" >> "{log}"\n{body}\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return log


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


# --- the exit status -------------------------------------------------------------------------

def test_requeue_exit_code_is_distinct() -> None:
    assert REQUEUE_EXIT_CODE == 75
    assert REQUEUE_EXIT_CODE not in (0, 1, 2, 126, 127) and REQUEUE_EXIT_CODE < 128


# --- signals ---------------------------------------------------------------------------------

def test_nothing_received(watch: StopWatch) -> None:
    assert watch.reason() is None
    assert watch.signal_name is None and watch.signal_count == 0
    assert watch.seconds_since_signal() is None


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_signal_sets_the_flag(watch: StopWatch, sig: signal.Signals,
                              capfd: pytest.CaptureFixture[str]) -> None:
    send(sig, watch)
    assert watch.reason() == f"{sig.name} received"
    assert watch.signal_name == sig.name and watch.signal_count == 1
    since = watch.seconds_since_signal()
    assert since is not None and 0 <= since < 5
    assert f"{sig.name} received: saving at the next step boundary" in capfd.readouterr().err


def test_second_signal_is_counted_and_the_first_reason_kept(watch: StopWatch) -> None:
    send(signal.SIGUSR1, watch)
    time.sleep(0.05)
    send(signal.SIGTERM, watch)
    send(signal.SIGUSR1, watch)
    assert watch.signal_count == 3
    assert watch.reason() == "SIGUSR1 received" and watch.signal_name == "SIGUSR1"
    since = watch.seconds_since_signal()
    assert since is not None and since >= 0.05  # measured from the first signal


def test_handler_never_raises(watch: StopWatch, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_write(fd: int, data: bytes) -> int:
        raise OSError("stderr is gone")

    monkeypatch.setattr(signals.os, "write", broken_write)
    watch._handle(signal.SIGTERM, None)
    assert watch.reason() == "SIGTERM received" and watch.signal_count == 1


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.mark.e2e
def test_sigterm_does_not_terminate_the_process_while_installed() -> None:
    code = """
import os, signal, time
from pretrain.slurm.signals import StopWatch
with StopWatch(job_end_time=None) as watch:
    os.kill(os.getpid(), signal.SIGTERM)
    deadline = time.monotonic() + 5
    while watch.reason() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    print(watch.reason())
os.kill(os.getpid(), signal.SIGTERM)  # handlers restored: the default action kills now
time.sleep(5)
print("still alive")
"""
    done = run_python(code)
    assert done.stdout.splitlines() == ["SIGTERM received"], done.stderr
    assert "SIGTERM received: saving at the next step boundary" in done.stderr
    assert done.returncode == -signal.SIGTERM  # only the second SIGTERM, after restore(), killed


def test_restore_puts_back_the_previous_handlers() -> None:
    received: list[int] = []

    def previous_usr1(signum: int, frame: object) -> None:
        received.append(signum)

    original = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGTERM)}
    try:
        signal.signal(signal.SIGUSR1, previous_usr1)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_watch = StopWatch(job_end_time=None)
        assert signal.getsignal(signal.SIGUSR1) == stop_watch._handle
        assert signal.getsignal(signal.SIGTERM) == stop_watch._handle
        stop_watch.restore()
        stop_watch.restore()  # a second call changes nothing
        assert signal.getsignal(signal.SIGUSR1) is previous_usr1
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while not received and time.monotonic() < deadline:
            time.sleep(0.001)
        assert received == [signal.SIGUSR1] and stop_watch.signal_count == 0

        with StopWatch(job_end_time=None) as stop_watch:
            send(signal.SIGUSR1, stop_watch)
        assert signal.getsignal(signal.SIGUSR1) is previous_usr1
        assert stop_watch.reason() == "SIGUSR1 received"  # still readable after restore
    finally:
        for sig, handler in original.items():
            signal.signal(sig, handler)


def test_only_in_the_main_thread() -> None:
    errors: list[Exception] = []

    def create() -> None:
        try:
            StopWatch(job_end_time=None)
        except Exception as error:  # collected for the assertion below
            errors.append(error)

    thread = threading.Thread(target=create)
    thread.start()
    thread.join()
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
    assert "main thread" in str(errors[0])


def test_negative_threshold_is_refused() -> None:
    with pytest.raises(ValueError, match="save_minutes_before_end"):
        StopWatch(-1, job_end_time=None)


# --- time-based saving -----------------------------------------------------------------------

def test_time_reason_only_under_the_threshold() -> None:
    end = time.time() + 20 * 60 + 1
    with StopWatch(15, job_end_time=end) as stop_watch:
        assert stop_watch.reason() is None
        left = stop_watch.minutes_left()
        assert left is not None and 19.9 < left <= 20.1
    with StopWatch(25, job_end_time=end) as stop_watch:
        assert stop_watch.reason() == "20.0 min left in the Slurm job (threshold 25)"
    with StopWatch(0, job_end_time=time.time() - 60) as stop_watch:  # 0 disables it
        assert stop_watch.reason() is None
    with StopWatch(15, job_end_time=None) as stop_watch:  # end time unknown
        assert stop_watch.reason() is None and stop_watch.minutes_left() is None


def test_signal_reason_wins_over_time() -> None:
    with StopWatch(15, job_end_time=time.time() + 60) as stop_watch:
        assert stop_watch.reason() is not None and "min left" in stop_watch.reason()
        send(signal.SIGTERM, stop_watch)
        assert stop_watch.reason() == "SIGTERM received"


def test_end_time_is_read_once_at_construction(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    end = datetime.datetime.now().replace(microsecond=0) + datetime.timedelta(minutes=10)
    log = fake_squeue(tmp_path, monkeypatch, f"echo {end:%Y-%m-%dT%H:%M:%S}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    with StopWatch(0) as stop_watch:  # disabled: Slurm is not asked
        assert stop_watch.job_end_time is None and stop_watch.reason() is None
    assert calls(log) == []
    with StopWatch(15) as stop_watch:
        assert stop_watch.job_end_time == end.timestamp()
        for _ in range(5):
            reason = stop_watch.reason() or ""
            assert reason.endswith("min left in the Slurm job (threshold 15)")
    assert calls(log) == ["-h -j 4242 -o %e SLURM_TIME_FORMAT=standard"]


def test_end_time_from_the_environment_wins(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    log = fake_squeue(tmp_path, monkeypatch, "echo 2026-11-22T06:12:33")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_JOB_END_TIME", "1795000000")
    assert slurm_job_end_time() == 1795000000.0
    assert calls(log) == []
    for bad in ("0", "soon"):
        monkeypatch.setenv("SLURM_JOB_END_TIME", bad)
        assert slurm_job_end_time() is None


def test_squeue_end_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = fake_squeue(tmp_path, monkeypatch, "echo 2026-11-22T06:12:33")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_TIME_FORMAT", "relative")  # the user's own format is overridden
    assert slurm_job_end_time() == datetime.datetime(2026, 11, 22, 6, 12, 33).timestamp()
    assert calls(log) == ["-h -j 4242 -o %e SLURM_TIME_FORMAT=standard"]


@pytest.mark.parametrize("output", ["N/A", "UNLIMITED", "Unknown", ""])
def test_squeue_unknown_end_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 output: str) -> None:
    log = fake_squeue(tmp_path, monkeypatch, f"echo '{output}'")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert slurm_job_end_time() is None
    assert len(calls(log)) == 1


def test_squeue_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_squeue(tmp_path, monkeypatch,
                "echo 'slurm_load_jobs error: Invalid job id specified' >&2\n"
                "echo 2026-11-22T06:12:33\nexit 1")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert slurm_job_end_time() is None


def test_squeue_that_hangs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_squeue(tmp_path, monkeypatch, "exec sleep 30")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setattr(signals, "SQUEUE_TIMEOUT_S", 0.2)
    start = time.monotonic()
    assert slurm_job_end_time() is None
    assert time.monotonic() - start < 10


def test_no_slurm_no_end_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = fake_squeue(tmp_path, monkeypatch, "echo 2026-11-22T06:12:33")
    assert slurm_job_end_time() is None  # no SLURM_JOB_ID: squeue is not asked
    with StopWatch(15) as stop_watch:
        assert stop_watch.job_end_time is None and stop_watch.reason() is None
    assert calls(log) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert slurm_job_end_time() is None  # in a job, but no squeue on PATH


def test_parse_squeue_end_time() -> None:
    expected = datetime.datetime(2026, 11, 22, 6, 12, 33).timestamp()
    assert parse_squeue_end_time("2026-11-22T06:12:33\n") == expected
    assert parse_squeue_end_time("\n  2026-11-22T06:12:33\n2026-11-23T00:00:00\n") == expected
    for text in ("N/A", "UNLIMITED", "NONE", "", "\n", "in 3 hours", "2026-11-22 06:12"):
        assert parse_squeue_end_time(text) is None
