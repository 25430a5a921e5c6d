"""Checkpoint I/O: save, verify and load time and MB/s of a real zero3 checkpoint, one process.

    .venv/bin/python bench/checkpoint_io.py [--vocab-size 32768] [--d-model 768] [--n-layers 12]
        [--n-heads 12] [--n-kv-heads 4] [--tie-embeddings | --no-tie-embeddings]
        [--repeats 3] [--dir /tmp] [--no-cold]

The model is a ~100M-parameter Llama shape by default (vocab 32768, d_model 768, 12 layers,
12 heads / 4 key-value heads, ffn 2048, tied embeddings: 100,682,496 parameters by
`pretrain.nn.model.count_parameters`), built by `build_training_engine` as the zero3 engine over
1 rank (`init_distributed` in this process), in the precision `train.precision=auto` resolves
to (fp32 on CPU: the CPU path; bf16 on a GPU that has it). One training step on a synthetic
micro-batch (random token ids, labels = next token) runs first, so that the optimizer state
(Adam moments) exists and is saved like in a real run.

Measured, each the best (minimum) of `--repeats` rounds, in a temporary run directory under
`--dir` (deleted afterwards); the folder is removed (untimed) before each save. A first save
(checksums on) is timed apart before the rounds: the first save of a process costs more. Each
round runs, in this order: save off, save on, verify sizes, verify sha256, load, drop the page
cache, load (cold), drop, verify sha256 (cold):
  save, checksums off / on: `pretrain.checkpoint.save` (DeepSpeed's save_checkpoint, the RNG
      file, fsync of every file, sha256 of every file when on, meta.json and `latest`). Split into
      its parts by timing wrappers around the engine's save_checkpoint and the module's
      fsync_file / sha256_file (the rest: RNG file, listing, meta.json, barriers);
  verify, sizes only / with sha256: `pretrain.checkpoint.verify`;
  load: `pretrain.checkpoint.load` (DeepSpeed's load_checkpoint, model and optimizer state, and
      the RNG file), into the same engine.
MB/s is the checkpoint folder's bytes (every file, meta.json included; 1 MB = 10^6 bytes) over
the seconds. Right after a save every file is still in the OS page cache, so the "warm" verify
and load read RAM, not the disk. The "cold" rows first drop each file from the page cache with
posix_fadvise(POSIX_FADV_DONTNEED) (the files are fsynced, so their pages are clean and can be
dropped); the bytes still resident afterwards are counted with util-linux `fincore` when it is
installed. A hypervisor's own cache under the VM's disk can still serve the "cold" reads.
CPU seconds (this process, all threads) next to wall seconds show what is CPU-bound (hashing,
serialization) and what waits on the disk (fsync).

Prints a table and writes bench/results/checkpoint_io_<host>.json (device, versions, shape,
parameter count, bytes, files, every round, load averages at start and end). The default run
takes 2-4 minutes on a 2-core VM.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchlib import cpu_flags, machine, write_results  # noqa: E402  (bench/ is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# As the Makefile sets them: no DeepSpeed op builds, and the CPU comm op compiled once, kept.
os.environ.setdefault("DS_BUILD_OPS", "0")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))

import torch  # noqa: E402

from pretrain.checkpoint import store as checkpoint  # noqa: E402
from pretrain.config import Config, load_config  # noqa: E402

MB = 1e6
IGNORE_INDEX = -100
STEP = 1


# ---------------------------------------------------------------------------------------------
# Timing: the whole operation, and its parts through wrappers
# ---------------------------------------------------------------------------------------------

class Parts:
    """Seconds spent in named parts of the operation being timed (reset before each one)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
        return timed


class TimedEngine:
    """The DeepSpeed engine, with save_checkpoint and load_checkpoint timed as parts."""

    def __init__(self, engine: Any, parts: Parts) -> None:
        self._engine = engine
        self.save_checkpoint = parts.wrap("deepspeed", engine.save_checkpoint)
        self.load_checkpoint = parts.wrap("deepspeed", engine.load_checkpoint)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


@contextlib.contextmanager
def patched_parts(parts: Parts) -> Iterator[None]:
    """Time pretrain.checkpoint's fsync and sha256 calls (the module's own names)."""
    saved = checkpoint.fsync_file, checkpoint.sha256_file
    checkpoint.fsync_file = parts.wrap("fsync", saved[0])
    checkpoint.sha256_file = parts.wrap("sha256", saved[1])
    try:
        yield
    finally:
        checkpoint.fsync_file, checkpoint.sha256_file = saved


def measure(parts: Parts, operation: Callable[[], Any]) -> dict[str, Any]:
    """Wall seconds, CPU seconds (user, system), page faults and the parts of one operation."""
    parts.seconds.clear()
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    operation()
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    measured = dict(parts.seconds)
    rest = seconds - sum(measured.values())
    if measured:
        measured["other"] = rest
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return {"seconds": seconds, "cpu_seconds": user + system, "user_seconds": user,
            "system_seconds": system, "minor_faults": after.ru_minflt - before.ru_minflt,
            "major_faults": after.ru_majflt - before.ru_majflt, "parts": measured}


# ---------------------------------------------------------------------------------------------
# The page cache
# ---------------------------------------------------------------------------------------------

def folder_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file())


def drop_from_page_cache(folder: Path) -> None:
    """Ask the kernel to drop every file's (clean) pages: the next read goes to the disk."""
    for path in folder_files(folder):
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)  # already done by save; dirty pages would not be dropped
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)


def resident_bytes(folder: Path) -> int | None:
    """Bytes of the folder's files in the page cache (util-linux fincore), None if unknown."""
    if shutil.which("fincore") is None:
        return None
    done = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES",
                           *map(str, folder_files(folder))], capture_output=True, text=True)
    if done.returncode != 0:
        return None
    return sum(int(line) for line in done.stdout.split())


# ---------------------------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------------------------

def make_config(args: argparse.Namespace) -> Config:
    return load_config(None, [
        f"model.vocab_size={args.vocab_size}", f"model.d_model={args.d_model}",
        f"model.n_layers={args.n_layers}", f"model.n_heads={args.n_heads}",
        f"model.n_kv_heads={args.n_kv_heads}", f"model.tie_embeddings={args.tie_embeddings}",
        f"data.seq_len={args.seq_len}", f"model.max_seq_len={max(args.seq_len, 256)}",
        f"train.micro_batch_size={args.micro_batch}", "train.grad_accum_steps=1",
        "parallel.engine=zero3", "parallel.pipeline_stages=1", "train.max_steps=1000"])


def synthetic_batch(config: Config, device: torch.device) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    shape = (config.train.micro_batch_size, config.data.seq_len)
    input_ids = torch.randint(0, config.model.vocab_size, shape, generator=generator)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[:, :-1] = input_ids[:, 1:]
    batch = {"input_ids": input_ids, "doc_ids": torch.zeros_like(input_ids), "labels": labels}
    return {name: tensor.to(device) for name, tensor in batch.items()}


def _quiet_deepspeed() -> None:
    import deepspeed

    deepspeed.utils.logger.setLevel(logging.WARNING)
    # torch 2.13 deprecates the collective names DeepSpeed 0.19 still calls, once per step.
    warnings.filterwarnings("ignore", message=r".*(all_gather_into_tensor|reduce_scatter_tensor)")


# ---------------------------------------------------------------------------------------------
# Fresh memory: what a first touch costs here (a VM may give freed memory back to its host)
# ---------------------------------------------------------------------------------------------

def touch_memory(size: int) -> dict[str, Any]:
    """Allocate `size` bytes and write every page, as torch.load fills its tensors; free them."""
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    buffer = torch.empty(size, dtype=torch.uint8)
    buffer.fill_(1)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    del buffer
    return {"seconds": seconds, "mb_per_s": size / MB / seconds,
            "system_seconds": after.ru_stime - before.ru_stime,
            "minor_faults": after.ru_minflt - before.ru_minflt}


def memory_probe(size: int, pause: float) -> dict[str, Any]:
    """First-touch cost of `size` bytes: right after the same amount was freed, and after
    `pause` seconds idle (long enough for a virtio balloon to report the free pages to the
    host, which then drops them: the next touch faults in the host too)."""
    touch_memory(size)
    at_once = touch_memory(size)
    time.sleep(pause)
    return {"bytes": size, "pause_seconds": pause, "reused_at_once": at_once,
            "after_pause": touch_memory(size)}


def balloon_free_page_reporting() -> bool | None:
    """Whether a virtio balloon with free page reporting (feature bit 5) is present."""
    found = None
    for device in Path("/sys/bus/virtio/devices").glob("*"):
        with contextlib.suppress(OSError):
            if int((device / "device").read_text().strip(), 16) == 5:  # the balloon
                found = (device / "features").read_text().strip()[5:6] == "1"
    return found


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

def device_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        **machine(("torch", "deepspeed", "numpy")),
        "cpu_sha_ni": "sha_ni" in cpu_flags(), "kernel": platform.release(),
        "balloon_free_page_reporting": balloon_free_page_reporting(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def filesystem(path: Path) -> dict[str, str]:
    """The mount that holds `path` (/proc/mounts: the longest mount point above it)."""
    best = {"mount_point": "", "device": "", "type": "", "options": ""}
    target = str(path.resolve())
    for line in Path("/proc/mounts").read_text().splitlines():
        device, mount_point, kind, options = line.split()[:4]
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best["mount_point"]):
            best = {"mount_point": mount_point, "device": device, "type": kind,
                    "options": options}
    return best


ROWS = [  # key, label, what the MB/s column means
    ("save_plain", "save, checksums off"),
    ("save_checksums", "save, checksums on"),
    ("verify_sizes", "verify, sizes only (warm)"),
    ("verify_sha256", "verify, sha256 (warm)"),
    ("verify_sha256_cold", "verify, sha256 (cold)"),
    ("load", "load (warm: page cache)"),
    ("load_cold", "load (cold)"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-size", type=int, default=32768)
    parser.add_argument("--d-model", type=int, default=768)
    parser.add_argument("--n-layers", type=int, default=12)
    parser.add_argument("--n-heads", type=int, default=12)
    parser.add_argument("--n-kv-heads", type=int, default=4)
    parser.add_argument("--tie-embeddings", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--seq-len", type=int, default=128, help="of the one training step")
    parser.add_argument("--micro-batch", type=int, default=1, help="of the one training step")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the best counts")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the temporary run directory goes (its filesystem is timed)")
    parser.add_argument("--no-cold", dest="cold", action="store_false",
                        help="skip the rows that drop the files from the page cache first")
    parser.add_argument("--probe-pause", type=float, default=5.0,
                        help="seconds idle in the fresh-memory probe (0: skip the probe)")
    parser.add_argument("--out", type=Path, help="the JSON to write (default: "
                        "bench/results/checkpoint_io_<host>.json)")
    args = parser.parse_args()

    load_start, started = os.getloadavg(), time.perf_counter()
    from pretrain.nn.model import count_parameters
    from pretrain.parallel.ds_config import resolve_precision
    from pretrain.parallel.topology import init_distributed, make_layout
    from pretrain.train.loop import build_training_engine

    _quiet_deepspeed()
    config = make_config(args)
    parameters = count_parameters(config.model)
    precision = resolve_precision(config.train.precision)
    print(f"building the zero3 engine: {parameters:,} parameters, {precision} ...", flush=True)
    topology = init_distributed()
    layout = make_layout(topology.world_size, 1, config.model.n_layers)
    build_started = time.perf_counter()
    engine = build_training_engine(config, layout, precision)
    engine.deepspeed.train()
    build_seconds = time.perf_counter() - build_started
    step_started = time.perf_counter()
    loss = engine.train_step([synthetic_batch(config, engine.device)])
    step_seconds = time.perf_counter() - step_started
    held = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel()
               for p in engine.deepspeed.module.parameters())
    print(f"built in {build_seconds:.1f} s; one step in {step_seconds:.1f} s (loss {loss:.3f}); "
          f"engine parameters {held:,}", flush=True)

    identity = checkpoint.run_identity(config, layout, "0" * 64)
    client_state = {"step": STEP, "tokens_seen": config.train.micro_batch_size
                    * config.data.seq_len, "batches": 1, "loader": {}}
    parts = Parts()
    timed_engine = TimedEngine(engine.deepspeed, parts)
    rounds: dict[str, list[dict[str, Any]]] = {key: [] for key, _ in ROWS}
    resident_after_drop: list[int | None] = []
    files: dict[str, int] = {}

    with tempfile.TemporaryDirectory(prefix="siyada-ckpt-bench-", dir=args.dir) as tmp, \
            patched_parts(parts):
        run_dir = Path(tmp)
        folder = checkpoint.checkpoint_root(run_dir) / checkpoint.step_tag(STEP)

        def save(checksums: bool) -> Callable[[], Any]:
            return lambda: checkpoint.save(timed_engine, run_dir, STEP, client_state, topology,
                                           identity, checksums=checksums)

        def verify(checksums: bool) -> Callable[[], Any]:
            return lambda: checkpoint.verify(folder, checksums=checksums)

        def load() -> None:
            restored = checkpoint.load(timed_engine, folder, topology)
            if restored.get("step") != STEP:
                raise RuntimeError(f"{folder}: loaded client state {restored!r}")

        # The first save of a process costs more than the next ones (fresh page-cache memory,
        # first calls): timed apart, so that the rounds compare like with like.
        first_save = measure(parts, save(True))
        print(f"first save: {first_save['seconds']:.2f} s", flush=True)
        for index in range(args.repeats):
            print(f"round {index + 1} of {args.repeats} ...", flush=True)
            for key, checksums in (("save_plain", False), ("save_checksums", True)):
                shutil.rmtree(folder, ignore_errors=True)
                rounds[key].append(measure(parts, save(checksums)))
            files = {str(path.relative_to(folder)): path.stat().st_size
                     for path in folder_files(folder)}
            rounds["verify_sizes"].append(measure(parts, verify(False)))
            rounds["verify_sha256"].append(measure(parts, verify(True)))
            rounds["load"].append(measure(parts, load))
            if args.cold:
                drop_from_page_cache(folder)
                resident_after_drop.append(resident_bytes(folder))
                rounds["load_cold"].append(measure(parts, load))
                drop_from_page_cache(folder)
                rounds["verify_sha256_cold"].append(measure(parts, verify(True)))

    total_bytes = sum(files.values())
    results: dict[str, Any] = {}
    for key, label in ROWS:
        if not rounds[key]:
            continue
        best = min(rounds[key], key=lambda run: run["seconds"])
        rate = total_bytes / MB / best["seconds"] if key != "verify_sizes" else None  # no reads
        results[key] = {"label": label, **best, "mb_per_s": rate,
                        "round_seconds": [run["seconds"] for run in rounds[key]],
                        "rounds": rounds[key]}
    hashing = results["verify_sha256"]["seconds"] - results["verify_sizes"]["seconds"]
    save_on = results["save_checksums"]
    derived = {
        "sha256_share_of_save": save_on["parts"].get("sha256", 0.0) / save_on["seconds"],
        "fsync_share_of_save": save_on["parts"].get("fsync", 0.0) / save_on["seconds"],
        "deepspeed_share_of_save": save_on["parts"].get("deepspeed", 0.0) / save_on["seconds"],
        "checksums_on_over_off": save_on["seconds"] / results["save_plain"]["seconds"],
        "sha256_mb_per_s_warm": total_bytes / MB / hashing if hashing > 0 else None,
    }
    probe = memory_probe(total_bytes, args.probe_pause) if args.probe_pause > 0 else None
    load_end = os.getloadavg()
    notes = [
        f"1 process, zero3 engine over 1 rank, {precision}; each row the best of {args.repeats} "
        "rounds; MB/s = the checkpoint folder's bytes / seconds (1 MB = 10^6 bytes).",
        "warm: right after the save, every file is still in the OS page cache, so the read "
        "comes from RAM. cold: each file dropped first with posix_fadvise(DONTNEED) "
        "(resident bytes after the drop: "
        f"{', '.join('?' if r is None else f'{r:,}' for r in resident_after_drop) or 'n/a'}); "
        "the hypervisor's cache under the VM disk may still serve part of it.",
        "CPU s: user + system CPU seconds of this process; sys s: the system (kernel) part; "
        "minflt: minor page faults (first touches of fresh memory, page-cache mappings).",
        "load touches fresh memory for every byte it reads (minflt x 4 KiB ~ the checkpoint "
        "size): where a VM's balloon reports free pages to its host, memory freed seconds "
        "earlier faults in the host again, which shows as wall time well above CPU time. The "
        "'fresh memory' line measures that cost alone: the same bytes written into memory "
        "freed just before, and into memory after an idle pause.",
        "save parts: DeepSpeed's save_checkpoint (serialize + write into the page cache), fsync "
        "of every file (the disk write), sha256 of every file, other (RNG file, meta.json, "
        "latest, barriers).",
        f"shared machine: load average {', '.join(f'{x:.2f}' for x in load_start)} at start, "
        f"{', '.join(f'{x:.2f}' for x in load_end)} at end ({os.cpu_count()} cores).",
    ]
    output = {
        "device": device_info(), "load_average_start": load_start, "load_average_end": load_end,
        "total_seconds": time.perf_counter() - started,
        "shape": {"vocab_size": args.vocab_size, "d_model": args.d_model,
                  "n_layers": args.n_layers, "n_heads": args.n_heads,
                  "n_kv_heads": args.n_kv_heads, "ffn_dim": config.model.ffn_dim,
                  "tie_embeddings": args.tie_embeddings, "parameters": parameters,
                  "non_embedding_parameters": count_parameters(config.model, False),
                  "engine_parameters": held, "precision": precision, "engine": "zero3",
                  "processes": 1, "build_seconds": build_seconds,
                  "train_step": {"micro_batch": args.micro_batch, "seq_len": args.seq_len,
                                 "seconds": step_seconds, "loss": loss}},
        "checkpoint": {"bytes": total_bytes, "bytes_per_parameter": total_bytes / parameters,
                       "files": files, "filesystem": filesystem(args.dir),
                       "resident_bytes_after_drop": resident_after_drop},
        "timing": {"repeats": args.repeats,
                   "statistic": "best (minimum) wall time of the rounds; parts and CPU seconds "
                                "of that round"},
        "derived": derived, "first_save": first_save, "results": results,
        "fresh_memory_probe": probe, "notes": notes,
    }

    dev = output["device"]
    print(f"\n{parameters:,} parameters (d_model {args.d_model}, {args.n_layers} layers, vocab "
          f"{args.vocab_size}, {'tied' if args.tie_embeddings else 'untied'}), {precision}; "
          f"checkpoint {total_bytes / MB:,.1f} MB in {len(files)} files "
          f"({total_bytes / parameters:.1f} bytes/parameter); {dev['cpu']} ({dev['cores']} "
          f"cores), torch {dev['torch']}, deepspeed {dev['deepspeed']}; "
          f"{output['checkpoint']['filesystem']['type']} on "
          f"{output['checkpoint']['filesystem']['device']}")
    print(f"{'operation':<34}{'seconds':>9}{'MB/s':>9}{'CPU s':>8}{'sys s':>7}"
          f"{'minflt':>9}   rounds (s)")
    for key, label in ROWS:
        if key not in results:
            continue
        row = results[key]
        rate = "-" if row["mb_per_s"] is None else f"{row['mb_per_s']:,.0f}"
        print(f"{label:<34}{row['seconds']:>9.3f}{rate:>9}"
              f"{row['cpu_seconds']:>8.2f}{row['system_seconds']:>7.2f}"
              f"{row['minor_faults']:>9,}   "
              + " ".join(f"{s:.2f}" for s in row["round_seconds"]))
        if key.startswith("save"):
            for part, seconds in row["parts"].items():
                print(f"{'  - ' + part:<34}{seconds:>9.3f}"
                      f"{total_bytes / MB / seconds if seconds > 0 else 0:>9,.0f}"
                      f"{100 * seconds / row['seconds']:>7.0f}%")
    print(f"{'first save of the process (apart)':<34}{first_save['seconds']:>9.3f}"
          f"{total_bytes / MB / first_save['seconds']:>9,.0f}{first_save['cpu_seconds']:>8.2f}"
          f"{first_save['system_seconds']:>7.2f}{first_save['minor_faults']:>9,}   "
          + ", ".join(f"{part} {seconds:.2f}" for part, seconds in first_save["parts"].items()))
    print(f"sha256 share of the save with checksums: {derived['sha256_share_of_save']:.0%}; "
          f"checksums on / off: {derived['checksums_on_over_off']:.2f}x")
    if probe is not None:
        reused, paused = probe["reused_at_once"], probe["after_pause"]
        print(f"fresh memory, {total_bytes / MB:,.0f} MB written once: {reused['seconds']:.2f} s "
              f"({reused['mb_per_s']:,.0f} MB/s) right after freeing as much, "
              f"{paused['seconds']:.2f} s ({paused['mb_per_s']:,.0f} MB/s) after "
              f"{probe['pause_seconds']:.0f} s idle; balloon free page reporting: "
              f"{output['device']['balloon_free_page_reporting']}")
    print("\n".join(notes))
    out = write_results("checkpoint_io", output, args.out)
    print(f"wrote {out} ({output['total_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
