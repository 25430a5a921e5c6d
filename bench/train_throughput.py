"""End-to-end training throughput: tokens/s, MFU and peak memory of `pretrain train`.

    python bench/train_throughput.py [--model configs/models/llama3_2_1b.yaml] [--seq-len 4096]
        [--micro-batch 2] [--steps 20] [--warmup 10] [--attention triton,sdpa]
        [--checkpointing none,selective] [--work DIR] [--out FILE]

Every row is one real run of `python -m pretrain train` in a fresh process: the zero3 engine
(ZeRO-3 over one rank) on one GPU, bf16, on shards prepared once from the bundled sample
corpus (`pretrain prepare`; the text only has to be real tokens, repeated as often as needed).
The rows differ in `model.attention_impl` (triton: our attention and fused add + RMSNorm
kernels; sdpa: PyTorch SDPA and the eager norm) and `parallel.activation_checkpointing`.

Measured from each run's metrics.jsonl: the median tokens/s and MFU of the steps after
`--warmup` (the first steps compile and autotune kernels), and the peak GPU memory (allocated
tensors, and the allocator's reserve). MFU is the training loop's own: PaLM's FLOPs per token
(6N with the output head + full-square attention, `pretrain.model.flops_per_token`) over the
datasheet's dense bf16 peak, as torchtitan and nanoGPT count it. Beside each row is what
`pretrain plan` predicts for the same config on this GPU: its peak (which adds the CUDA
context and fragmentation as a fixed estimate) and its MFU at its assumed kernel efficiency.

Prints a table and writes bench/results/train_throughput_<gpu>.json with the device, the
versions and every row. On a CPU it runs the same way (fp32, no MFU): a check that the script
works before a GPU is at hand, not a measurement.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout

from bench.benchlib import RESULTS, device_slug, machine, write_results  # noqa: E402
from pretrain.config import load_config  # noqa: E402
from pretrain.runs import RunDir  # noqa: E402
from pretrain.scaling.planner import GPUS, GpuSpec, estimate_throughput, plan_memory  # noqa: E402
from pretrain.train.metrics import read_metrics  # noqa: E402

GIB = 2**30


def pretrain(command: str, model: Path, overrides: list[str], log: Path) -> int:
    """`python -m pretrain COMMAND --config MODEL OVERRIDES`, output into `log`."""
    with open(log, "w") as handle:
        return subprocess.run([sys.executable, "-m", "pretrain", command, "--config", str(model),
                               *overrides], cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"}).returncode


def row_overrides(args: argparse.Namespace, attention: str, checkpointing: str) -> list[str]:
    """The config of one row: the shape and the implementation, nothing that costs time
    outside the steps (no evaluation, no TensorBoard, one checkpoint at the end)."""
    return [f"data.seq_len={args.seq_len}", f"train.micro_batch_size={args.micro_batch}",
            "train.grad_accum_steps=1", f"train.max_steps={args.warmup + args.steps}",
            "parallel.engine=zero3", f"parallel.activation_checkpointing={checkpointing}",
            f"model.attention_impl={attention}",
            f"model.norm_impl={'triton' if attention == 'triton' else 'torch'}",
            "optim.warmup_steps=5", "logging.log_interval=1", "logging.tensorboard=false",
            "logging.progress_bar=false", "eval.enabled=false", "checkpoint.checksums=false",
            "data.mixture.max_epochs=1000000"]


def planner_gpu() -> GpuSpec | None:
    """The planner's spec of this GPU: same model, closest memory size (None on CPU)."""
    if not torch.cuda.is_available():
        return None
    slug = device_slug(torch.cuda.get_device_name())
    total = torch.cuda.get_device_properties(0).total_memory
    candidates = [spec for name, spec in GPUS.items() if name.split("-")[0] == slug]
    return min(candidates, key=lambda spec: abs(spec.memory_bytes - total), default=None)


def predicted(model: Path, overrides: list[str], gpu: GpuSpec | None) -> dict[str, Any]:
    if gpu is None:
        return {}
    config = load_config(model, [*overrides, "train.precision=bf16"])
    memory = plan_memory(config, 1, 1, gpu)
    return {"planner_gpu": gpu.name, "planned_peak_gib": memory.peak / GIB,
            "planned_overhead_gib": memory.worst.overhead / GIB,
            "planned_mfu": estimate_throughput(config, 1, 1, gpu).mfu}


def measured(run_dir: Path, warmup: int) -> dict[str, Any]:
    rows = read_metrics(RunDir(run_dir).metrics)
    timed = [row for row in rows if row["step"] > warmup]
    result = {"steps_timed": len(timed), "first_loss": rows[0]["loss"],
              "last_loss": rows[-1]["loss"],
              "tokens_per_s": statistics.median(row["tokens_per_s"] for row in timed)}
    if "mfu" in timed[0]:  # only where the GPU's peak FLOP/s is known
        result["mfu"] = statistics.median(row["mfu"] for row in timed)
    for key in ("peak_allocated_gib", "peak_reserved_gib"):
        if key in timed[0]:
            result[key] = max(row[key] for row in rows)
    return result


def run_row(args: argparse.Namespace, dataset: Path, attention: str, checkpointing: str,
            gpu: GpuSpec | None) -> dict[str, Any]:
    name = f"{attention}-{checkpointing}"
    run_dir = args.work / name
    overrides = [*row_overrides(args, attention, checkpointing), f"data.dataset={dataset}",
                 f"run.dir={run_dir}", f"run.name={name}"]
    row: dict[str, Any] = {"attention": attention, "checkpointing": checkpointing,
                           "micro_batch": args.micro_batch, "seq_len": args.seq_len,
                           **predicted(args.model, overrides, gpu)}
    log = args.work / f"{name}.log"
    status = pretrain("train", args.model, overrides, log)
    if status != 0:
        tail = log.read_text(errors="replace").splitlines()[-5:]
        print(f"{name}: exit status {status}; the end of {log}:\n  " + "\n  ".join(tail))
        return {**row, "status": status, "log_tail": tail}
    row.update(status=0, **measured(run_dir, args.warmup))
    shutil.rmtree(RunDir(run_dir).checkpoints)  # a 1B model's is ~17 GB
    return row


def _cell(row: dict[str, Any], key: str, width: int, form: str) -> str:
    return format(row[key], f">{width}{form}") if key in row else "-".rjust(width)


def format_table(rows: list[dict[str, Any]]) -> str:
    header = (f"{'attention':<9} {'ckpt':<9} {'tokens/s':>10} {'MFU':>6} {'planned':>8} "
              f"{'alloc GiB':>9} {'resv GiB':>9} {'planned':>8} {'loss':>13}")
    lines = [header, "-" * len(header)]
    for row in rows:
        if row["status"] != 0:
            lines.append(f"{row['attention']:<9} {row['checkpointing']:<9} failed "
                         f"(exit {row['status']})")
            continue

        lines.append(
            f"{row['attention']:<9} {row['checkpointing']:<9} {row['tokens_per_s']:>10,.0f} "
            f"{_cell(row, 'mfu', 6, '.1%')} {_cell(row, 'planned_mfu', 8, '.1%')} "
            f"{_cell(row, 'peak_allocated_gib', 9, '.1f')} "
            f"{_cell(row, 'peak_reserved_gib', 9, '.1f')} "
            f"{_cell(row, 'planned_peak_gib', 8, '.1f')} "
            f"{row['first_loss']:>6.2f}->{row['last_loss']:<5.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "configs/models/llama3_2_1b.yaml")
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--attention", default="triton,sdpa",
                        help="model.attention_impl of each row (comma-separated)")
    parser.add_argument("--checkpointing", default="none",
                        help="parallel.activation_checkpointing of each row (comma-separated)")
    parser.add_argument("--work", type=Path, help="runs and logs (default: a temporary folder)")
    parser.add_argument("--out", type=Path, help="results JSON (default bench/results/)")
    args = parser.parse_args()
    args.work = (args.work or Path(tempfile.mkdtemp(prefix="train_throughput_"))).resolve()
    args.work.mkdir(parents=True, exist_ok=True)

    dataset = args.work / "data"
    prepared = [f"data.seq_len={args.seq_len}", f"data.dataset={dataset}",
                f"run.dir={args.work / 'prepare'}"]
    if pretrain("prepare", args.model, prepared, args.work / "prepare.log") != 0:
        sys.exit(f"pretrain prepare failed; see {args.work / 'prepare.log'}")
    gpu = planner_gpu()
    rows = [run_row(args, dataset, attention, checkpointing, gpu)
            for checkpointing in args.checkpointing.split(",")
            for attention in args.attention.split(",")]

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    results = {"device": device, "cuda": torch.version.cuda,
               **machine(("torch", "triton", "deepspeed")),
               "model": str(args.model.relative_to(ROOT) if args.model.is_relative_to(ROOT)
                            else args.model),
               "engine": "zero3, 1 GPU", "warmup_steps": args.warmup, "rows": rows}
    slug = device_slug(device) if device != "cpu" else "cpu"
    out = write_results("train_throughput", results,
                        args.out or RESULTS / f"train_throughput_{slug}.json")
    print(f"\n{device}, {results['model']}, {args.micro_batch} x {args.seq_len} tokens a step "
          f"(planned: `pretrain plan` on {gpu.name if gpu else 'no GPU'})")
    print(format_table(rows))
    print(f"results in {out}; runs and logs in {args.work}")


if __name__ == "__main__":
    main()
