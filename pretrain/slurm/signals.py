"""Stop cleanly before Slurm kills the job: signals and the job's end time become a save + requeue.

The flow:

1. SIGUSR1 or SIGTERM arrives (Slurm's warning before the time limit, preemption,
   `scancel --signal=...`). The handler installed by `StopWatch` only records which signal came
   and when, and returns: the interrupted code (a forward pass, an all-reduce, a checkpoint write)
   goes on undisturbed.
2. At the next step boundary the loop asks `StopWatch.reason()`. Besides a signal, it also says
   "stop" when the job has less than `save_minutes_before_end` minutes left before the Slurm end
   time (read once, at construction).
3. The ranks do not all see a signal at the same step (or at all: see below), so the loop
   all-reduces "stop wanted" (a max over ranks) and every rank stops at the same step.
4. All ranks save the checkpoint together, then exit with `REQUEUE_EXIT_CODE`.
5. The sbatch script turns that status into a requeue (the job needs `#SBATCH --requeue`):

       srun ... python -m pretrain train --config my.yaml
       status=$?
       if [ "$status" -eq 75 ]; then scontrol requeue "$SLURM_JOB_ID"; fi
       exit "$status"

   The requeued job resumes from the latest checkpoint.

A second or third signal while the save runs is counted and otherwise ignored: the save is never
interrupted, so it cannot be half written because of it. (Python runs the handler in the main
thread between bytecodes; a signal that arrives during a long C call - NCCL, `torch.save`, a write -
is handled after that call returns, and interrupted system calls are retried, PEP 475.)

How Slurm delivers the warning, and the grace time:

- `#SBATCH --signal=USR1@300` sends SIGUSR1 about 300 s before the time limit to every task of
  every job step, i.e. to each rank started by `srun` (Slurm's timing resolution is about a
  minute, so leave margin). With one `srun` task per rank every rank sees the signal. A launcher in
  between (torchrun, the deepspeed launcher) receives it instead and must forward it to the ranks.
- `#SBATCH --signal=B:USR1@300` sends it to the batch shell only. Nothing reaches the ranks unless
  the script forwards it, e.g. `trap 'kill -USR1 $pid' USR1; srun ... & pid=$!; wait $pid;
  wait $pid` (bash's `wait` returns early when a trapped signal arrives, hence the second one).
- At the time limit, on preemption (with the partition's GraceTime) or on a plain `scancel`,
  Slurm sends SIGTERM to the steps and SIGKILL after KillWait (default 30 s) or GraceTime. SIGTERM
  is handled like SIGUSR1 here, but 30 s is rarely enough for a large checkpoint: ask for an
  earlier SIGUSR1 with `--signal`, or set `save_minutes_before_end`.
- The save has to finish within the grace time: the time between the signal and SIGKILL.
  `StopWatch.seconds_since_signal()` lets the loop log how much of it the save used.
- `scancel --signal=USR1 <job>` triggers a save + requeue by hand (add `--batch` to reach only
  the batch shell).

The job's end time comes from `SLURM_JOB_END_TIME` (Unix seconds; exported by Slurm >= 23.02),
else from one `squeue -h -j $SLURM_JOB_ID -o %e` at start. It is read once: a time limit changed
with `scontrol update` while the job runs is not seen.
"""

from __future__ import annotations

import datetime
import enum
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from types import FrameType, TracebackType
from typing import Any

# The exit status that means "stopped on purpose after saving a checkpoint; requeue me".
# 75 is EX_TEMPFAIL from sysexits.h ("temporary failure, the user is invited to retry"). It does
# not clash with the statuses that mean something else here: 0 (finished), 1 (Python's uncaught
# exception), 2 (our CLI's bad input, pretrain/errors.py), 126/127 (shell: not executable / not
# found) and 128+N (killed by signal N: 137 = SIGKILL, 143 = SIGTERM, 138 = SIGUSR1), so a crash,
# a bad config or a kill never looks like a requeue request.
REQUEUE_EXIT_CODE = 75
# The exit status of a rank whose hang watchdog found training stuck (a peer gone silent;
# pretrain/train/watchdog.py): nothing was saved, the job is requeued and resumes from the last
# checkpoint. 76 is EX_PROTOCOL, next to EX_TEMPFAIL.
HANG_EXIT_CODE = 76

# The signals that ask for a save + requeue. SIGINT is Ctrl-C at a terminal: the first one saves
# at the next step boundary like the others, a second one stops at once (KeyboardInterrupt;
# the CLI says "interrupted" and exits 130).
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)


def _interrupt_again(signum: int, earlier: Iterable[str]) -> None:
    """A second Ctrl-C: the person at the terminal wants out now, not at the next step."""
    if signum == signal.SIGINT and "SIGINT" in earlier:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        raise KeyboardInterrupt

SQUEUE_TIMEOUT_S = 10.0


class _FromSlurm(enum.Enum):
    TOKEN = "from Slurm"


FROM_SLURM = _FromSlurm.TOKEN
"""Default for `StopWatch(job_end_time=...)`: read the end time from the Slurm job."""


def parse_squeue_end_time(text: str) -> float | None:
    """Unix time from `squeue -o %e` output (e.g. "2026-11-22T06:12:33", local time).

    None for anything that is not such a time: "N/A", "UNLIMITED", "Unknown", empty output.
    """
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            end = datetime.datetime.strptime(line, "%Y-%m-%dT%H:%M:%S")
        except ValueError:
            return None
        return end.timestamp()  # naive datetime: local time, as squeue prints it
    return None


def slurm_job_end_time(environ: Mapping[str, str] | None = None) -> float | None:
    """The Slurm job's end time (Unix seconds), or None when not in a job or not known.

    `SLURM_JOB_END_TIME` when set, else (only when `SLURM_JOB_ID` is set and `squeue` is on PATH)
    one call of `squeue -h -j $SLURM_JOB_ID -o %e`. Never raises.
    """
    environ = os.environ if environ is None else environ
    value = environ.get("SLURM_JOB_END_TIME", "").strip()
    if value:
        try:
            end = float(value)
        except ValueError:
            end = 0.0
        return end if end > 0 else None
    job_id = environ.get("SLURM_JOB_ID", "").strip()
    squeue = shutil.which("squeue", path=environ.get("PATH"))
    if not job_id or squeue is None:
        return None
    # SLURM_TIME_FORMAT=standard: a user's own format ("relative", strftime) would not parse.
    env = {**environ, "SLURM_TIME_FORMAT": "standard"}
    try:
        done = subprocess.run([squeue, "-h", "-j", job_id, "-o", "%e"], env=env,
                              capture_output=True, text=True, timeout=SQUEUE_TIMEOUT_S,
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return parse_squeue_end_time(done.stdout)


def start_resource_tracker() -> None:
    """Start Python's multiprocessing resource tracker now, deaf to SIGUSR1.

    Slurm signals every process of a job step, not only the ranks. The tracker (mosaicml-
    streaming's shared memory registers with it) is a fresh interpreter that ignores SIGINT and
    SIGTERM itself but dies of SIGUSR1; the rank's exit then prints KeyError tracebacks, and
    its shared memory may be left behind. A signal ignored here stays ignored across the
    tracker's exec. (DataLoader workers are forked after the StopWatch is installed, so they
    share its handler: they log the signal and carry on.)
    """
    from multiprocessing import resource_tracker

    previous = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        resource_tracker.ensure_running()
    finally:
        signal.signal(signal.SIGUSR1, previous)


# Stop signals that came before the StopWatch existed, as (signal name, time.monotonic()).
_held: list[tuple[str, float]] = []


def hold_stop_signals(signals: Iterable[signal.Signals] = STOP_SIGNALS) -> None:
    """From now on, record stop signals instead of dying of them, until a StopWatch takes over.

    `pretrain train` calls this first thing. A rank spends seconds importing torch and DeepSpeed
    and building its engine before the loop creates its StopWatch; Slurm's warning can come in
    that window (a short time limit, a preemption right after a requeue), and SIGUSR1's default
    action would kill the rank (status 138: a crash, not a requeue). The StopWatch created later
    starts from what was held here, so the run saves at its first step boundary.
    """
    def hold(signum: int, frame: FrameType | None) -> None:
        _interrupt_again(signum, (name for name, _ in _held))
        _held.append((signal.Signals(signum).name, time.monotonic()))
        os.write(2, f"[signals] {signal.Signals(signum).name} received while starting: saving "
                    "at the first step boundary\n".encode())

    for sig in signals:
        signal.signal(sig, hold)


def ignore_stop_signals(signals: Iterable[signal.Signals] = STOP_SIGNALS) -> None:
    """Ignore stop signals for the rest of the process (SIG_IGN), once its outcome is decided.

    A Python handler would not do: interpreter shutdown puts the default action back on every
    signal that has one, and SIGUSR1's default is to terminate (status 138), which would turn
    a finished run (0), a requeue (75) or a refused input (2) into a kill. SIG_IGN survives
    shutdown.
    """
    for sig in signals:
        signal.signal(sig, signal.SIG_IGN)


class StopWatch:
    """Records stop signals and knows the job's end time; the loop asks `reason()` each step.

    Installs handlers for `signals` (SIGUSR1 and SIGTERM) on construction, so it must be created
    in the main thread. `restore()` (or leaving the `with` block) puts the previous handlers back;
    what was recorded stays readable.

    save_minutes_before_end: stop when the job has less than this many minutes left; 0 disables.
    job_end_time: the job's end time in Unix seconds, None for unknown; by default it is read once
        from the Slurm job (`slurm_job_end_time`), and only when save_minutes_before_end > 0.
    """

    def __init__(self, save_minutes_before_end: float = 0.0, *,
                 job_end_time: float | None | _FromSlurm = FROM_SLURM,
                 signals: Iterable[signal.Signals] = STOP_SIGNALS) -> None:
        if save_minutes_before_end < 0:
            raise ValueError(f"save_minutes_before_end must be >= 0, got {save_minutes_before_end}")
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("StopWatch installs signal handlers, so it must be created in the "
                               "main thread")
        self.save_minutes_before_end = float(save_minutes_before_end)
        if job_end_time is FROM_SLURM:
            job_end_time = slurm_job_end_time() if self.save_minutes_before_end > 0 else None
        self.job_end_time: float | None = job_end_time
        # (signal name, time.monotonic()) of the first signal, set once in one assignment.
        self._first: tuple[str, float] | None = None
        self.signal_count = 0
        self._names: list[str] = []  # every signal received, in order
        self._signals = tuple(signal.Signals(s) for s in signals)
        # Preformatted so the handler does no work beyond one os.write.
        self._messages = {int(s): f"[signals] {s.name} received: saving at the next step boundary"
                                   f" (pid {os.getpid()})\n".encode() for s in self._signals}
        self._previous: dict[signal.Signals, Any] = {}
        try:
            for sig in self._signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        except BaseException:
            self.restore()
            raise
        if _held:  # signals that came while the process was starting (hold_stop_signals)
            self._first, self.signal_count = _held[0], len(_held)
            self._names = [name for name, _ in _held]
            _held.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        """Signal handler: record, write one line to stderr, return. Raises only on a second
        SIGINT (KeyboardInterrupt: Ctrl-C twice stops at once)."""
        _interrupt_again(signum, self._names)
        self._names.append(signal.Signals(signum).name)
        try:
            self.signal_count += 1
            if self._first is None:
                self._first = (signal.Signals(signum).name, time.monotonic())
            os.write(2, self._messages.get(signum, b"[signals] stop signal received\n"))
        except Exception:  # must not raise into the interrupted code
            pass

    @property
    def signal_name(self) -> str | None:
        """Name of the first signal received ("SIGUSR1", "SIGTERM"), or None."""
        return None if self._first is None else self._first[0]

    def seconds_since_signal(self) -> float | None:
        """Seconds since the first signal (time.monotonic()), or None when none came."""
        return None if self._first is None else time.monotonic() - self._first[1]

    def minutes_left(self) -> float | None:
        """Minutes until the Slurm job's end time, or None when unknown."""
        if self.job_end_time is None:
            return None
        return (self.job_end_time - time.time()) / 60.0

    def reason(self) -> str | None:
        """Why the loop should save and exit now, or None to go on.

        "SIGUSR1 received", "SIGTERM received" (the first signal wins), or
        "12.0 min left in the Slurm job (threshold 15)".
        """
        first = self._first
        if first is not None:
            return f"{first[0]} received"
        if self.save_minutes_before_end > 0:
            left = self.minutes_left()
            if left is not None and left <= self.save_minutes_before_end:
                return (f"{left:.1f} min left in the Slurm job "
                        f"(threshold {self.save_minutes_before_end:g})")
        return None

    def ignore_from_now_on(self) -> None:
        """`ignore_stop_signals` for this watch's signals, restoring nothing: for a run that
        has finished or saved for a requeue."""
        self._previous.clear()
        ignore_stop_signals(self._signals)

    def restore(self) -> None:
        """Put back the handlers that were there before; safe to call more than once."""
        while self._previous:
            sig, previous = self._previous.popitem()
            # None: the previous handler was not installed from Python; the default is the best
            # approximation signal.signal() accepts.
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)

    def __enter__(self) -> StopWatch:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.restore()
