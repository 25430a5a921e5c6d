"""Engine overhead on CPU: optimizer-step time of each engine against plain PyTorch (ratio).

    .venv/bin/python bench/engine_overhead.py [--d-model 128] [--n-layers 4] [--seq-len 128]
        [--micro-batch 8] [--grad-accum 4] [--warmup 2] [--steps 2] [--repeats 5]

The model is the demo config's shape (vocab 4096, d_model 128, 4 layers, 4 heads / 2 key-value
heads, tied embeddings, fp32) unless the shape flags say otherwise; the data are synthetic
micro-batches (random token ids, 1-4 documents per row, labels = the next token with -100 at
every document end), the same global batches for every configuration, so no dataset is needed.
One optimizer step processes the same global batch everywhere: micro-batch x grad-accum
sequences (by default 8 x 4 = 32 sequences, 4,096 tokens).

Measured: the mean time of one optimizer step after `--warmup` steps, best of `--repeats`
rounds of `--steps` steps. The rows run in two launches, each building all of its rows in one
process (per rank) and interleaving them round by round, so that a noisy shared VM slows every
row of a launch alike (step times here drift by 2-5x from minute to minute); ratios are taken
within a launch.
1 process (`python bench/engine_overhead.py --worker`; the engines find a free rendezvous port
themselves), torch's default thread count, then each again on 1 thread (a busy machine disturbs
2-thread steps far more than 1-thread ones: OpenMP waits at every op for its slowest thread):
(a)  plain PyTorch: `Transformer` + `torch.optim.AdamW` with the engines' parameter groups
     (`build_optimizer`) and LR schedule; per micro-batch forward, loss (sum / targets of the
     step), backward; then clip_grad_norm_, step, zero_grad. No DeepSpeed in the step;
(b)  the zero3 engine (`build_training_engine` after `init_distributed`), ZeRO-3 over 1 rank;
(c)  the pipeline engine with pipeline_stages=1 (ZeRO-1).
2 processes (`torchrun --nproc-per-node 2` of the same script), ONE torch thread per process
(torchrun's own default, also set explicitly):
(d)  zero3 over 2 data-parallel ranks, each taking half the global batch (half the
     micro-batches, or half the micro-batch when --grad-accum is odd), and a 2-stage pipeline
     (1 data-parallel rank) whose stages both see all the micro-batches (1F1B schedule);
(a)  again, and (a') plain PyTorch on 1 thread with the same split as one rank of each engine:
     the full batch (like the pipeline) and one rank's half (like zero3). These run on rank 0
     alone while rank 1 is blocked in a barrier (its CPU time meanwhile is recorded).
"vs (a)" divides by (a) of the same launch. The two processes share the two cores that (a) uses
with two threads, so for (d) that ratio mixes the parallel speedup with the engines' overhead.
"vs like" divides by the plain row with the same threads and split (for (b) and (c): (a) on as
many threads; for (d): the matching (a') row of its launch): for zero3 over 2 ranks, 1.0
means each rank runs as fast as plain PyTorch on its share alone on one core (no communication
or contention cost); for the 2-stage pipeline 0.5 would be a perfect split of the layers, and
the 1F1B bubble alone gives (m + 1) / 2m for m micro-batches. The first- and last-step losses
are recorded: rows on the same global batch start from the same weights and data and must agree
(a check that every engine does the same work). Building the zero3 engine leaves DeepSpeed's
ZeRO-3 linear in place of torch.nn.functional.linear for the whole process; each row runs with
the F.linear its own build left (pristine for the others), as it would alone in its process.

"CPU ms" is the CPU time of all processes per step, and "CPU/tok vs like" its per-token ratio
to the like row: the engine's extra work whatever the waiting, the steadiest number on a busy
machine (for 1-thread rows; 2 threads add OpenMP's spin-waiting).
Other work may share this VM: the CPU time that /proc/stat counts beyond ours is printed and
recorded per launch ("other processes: N cores"); with other load above ~0.1 cores, the
2-thread rows (and ratios against them) are unreliable.

Prints a table and writes bench/results/engine_overhead_<host>.json (device, versions, shape,
each row, per-round times). The default run takes about 2 minutes on an idle 2-core VM, 3 on
a busy one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchlib import machine, write_results  # noqa: E402  (bench/ is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from pretrain.config import Config, load_config  # noqa: E402

# As the Makefile sets them: no DeepSpeed op builds, and the CPU comm op compiled once, kept.
os.environ.setdefault("DS_BUILD_OPS", "0")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))

IGNORE_INDEX = -100
POOL = 4  # distinct global batches, cycled over the steps
NOTES = [
    "split: data-parallel ranks x micro-batch x micro-batches per rank; every row steps on the "
    "same global batch, except (a') 1 rank's share (half of it).",
    "threads: 1-process rows use torch's default; the 2-process engines 1 thread per process "
    "(OMP_NUM_THREADS=1 and torch.set_num_threads(1)), sharing the same cores as (a).",
    "vs (a): step time over plain PyTorch in the same launch; for the 2-process rows it mixes "
    "the parallel speedup with the engine's overhead.",
    "vs like: over plain PyTorch on 1 thread doing the same split as one rank: for zero3 over 2 "
    "ranks 1.00 means no overhead; for the 2-stage pipeline 0.50 is a perfect split and the "
    "1F1B bubble alone gives (m+1)/2m for m micro-batches.",
    "CPU ms: CPU time per step of all the processes together (best round); 2 threads include "
    "OpenMP's spin-waiting, which a busy machine inflates. CPU/tok vs like: CPU time per token "
    "over the like row's, the engine's extra work whatever the waiting (1-thread rows: "
    "reliable even on a busy machine).",
    "(med): the median over rounds of the same ratio taken within each round; where it differs "
    "from the best-of ratio, the VM's noise moved between rounds.",
]
RANK_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                  "MASTER_PORT", "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")


# ---------------------------------------------------------------------------------------------
# Worker side: one configuration, timed in this process (rank 0 writes the result)
# ---------------------------------------------------------------------------------------------

def make_config(shape: dict[str, int], engine: str, stages: int, micro_batch: int,
                grad_accum: int) -> Config:
    overrides = [f"model.vocab_size={shape['vocab_size']}", f"model.d_model={shape['d_model']}",
                 f"model.n_layers={shape['n_layers']}", f"model.n_heads={shape['n_heads']}",
                 f"model.n_kv_heads={shape['n_kv_heads']}", f"data.seq_len={shape['seq_len']}",
                 f"model.max_seq_len={max(shape['seq_len'], 256)}",
                 f"train.micro_batch_size={micro_batch}", f"train.grad_accum_steps={grad_accum}",
                 f"parallel.engine={'pipeline' if engine == 'pipeline' else 'zero3'}",
                 f"parallel.pipeline_stages={stages}", "train.max_steps=1000"]
    return load_config(None, overrides)


def global_batches(shape: dict[str, int], sequences: int, seed: int) -> list[dict[str, Any]]:
    """POOL global batches of `sequences` rows: input_ids, doc_ids, labels [sequences, seq_len]."""
    generator = torch.Generator().manual_seed(seed)
    length = shape["seq_len"]
    batches = []
    for _ in range(POOL):
        input_ids = torch.randint(0, shape["vocab_size"], (sequences, length), generator=generator)
        doc_ids = torch.zeros(sequences, length, dtype=torch.long)
        for row in range(sequences):
            documents = int(torch.randint(1, 5, (1,), generator=generator))
            starts = torch.randperm(length - 1, generator=generator)[:documents - 1] + 1
            doc_ids[row, starts] = 1
        doc_ids = doc_ids.cumsum(dim=1)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        same_document = doc_ids[:, 1:] == doc_ids[:, :-1]
        labels[:, :-1] = torch.where(same_document, input_ids[:, 1:], IGNORE_INDEX)
        batches.append({"input_ids": input_ids, "doc_ids": doc_ids, "labels": labels})
    return batches


def rank_share(batch: dict[str, Any], data_rank: int, micro_batch: int,
               grad_accum: int) -> list[dict[str, Any]]:
    """This data-parallel rank's micro-batches of one global batch (contiguous rows)."""
    start = data_rank * micro_batch * grad_accum
    return [{name: tensor[start + i * micro_batch:start + (i + 1) * micro_batch]
             for name, tensor in batch.items()} for i in range(grad_accum)]


class PlainStep:
    """Single-process PyTorch: what an engine does for one step, with nothing in between."""

    def __init__(self, config: Config) -> None:
        from pretrain.nn.model import Transformer
        from pretrain.parallel.engine import build_optimizer
        from pretrain.train.optim import lr_multiplier

        self.config = config
        self.model = Transformer(config.model, init_seed=config.train.seed)
        self.model.train()
        self.optimizer = build_optimizer(self.model, config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_multiplier(config.optim, config.train.max_steps))

    def __call__(self, micro_batches: list[dict[str, Any]]) -> float:
        from pretrain.nn.model import causal_lm_loss

        targets = sum(int((batch["labels"] != IGNORE_INDEX).sum()) for batch in micro_batches)
        cross_entropy_sum = 0.0
        for batch in micro_batches:
            logits = self.model(batch["input_ids"], batch["doc_ids"])
            objective, cross_entropy = causal_lm_loss(logits, batch["labels"],
                                                      self.config.optim.z_loss)
            (objective / targets).backward()
            cross_entropy_sum += cross_entropy.item()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return cross_entropy_sum / targets


def _quiet_deepspeed() -> None:
    import deepspeed

    deepspeed.utils.logger.setLevel(logging.WARNING)
    # torch 2.13 deprecates the collective names DeepSpeed 0.19 still calls, once per step.
    warnings.filterwarnings("ignore", message=r".*(all_gather_into_tensor|reduce_scatter_tensor)")


def build_step(row: dict[str, Any], shape: dict[str, int], rank: int,
               world_size: int) -> tuple[Callable[[list[dict[str, Any]]], float] | None, int]:
    """The row's step function on this rank (None: a plain row on a rank other than 0) and the
    data-parallel rank whose share of each global batch it takes."""
    config = make_config(shape, row["engine"], row["stages"], row["micro_batch"],
                         row["grad_accum"])
    if row["engine"] == "plain":
        return (PlainStep(config) if rank == 0 else None), 0
    from pretrain.parallel.ds_config import resolve_precision
    from pretrain.parallel.topology import make_layout
    from pretrain.train.loop import build_training_engine

    layout = make_layout(world_size, row["stages"], config.model.n_layers)
    engine = build_training_engine(config, layout, resolve_precision(config.train.precision))
    engine.deepspeed.train()
    return engine.train_step, layout.data_rank_of(rank)


def run_worker(spec_path: Path) -> None:
    """Time every row of one launch in this process, rounds interleaved; rank 0 writes JSON."""
    launch = json.loads(spec_path.read_text(encoding="utf-8"))
    rows, shape = launch["rows"], launch["shape"]
    distributed = launch["processes"] > 1 or any(row["engine"] != "plain" for row in rows)
    rank, world_size = 0, 1
    if distributed:
        import torch.distributed as dist

        from pretrain.parallel.topology import init_distributed

        _quiet_deepspeed()
        topology = init_distributed()
        rank, world_size = topology.rank, topology.world_size
    pool = global_batches(shape, launch["global_sequences"], launch["seed"])
    # Building the zero3 engine replaces torch.nn.functional.linear for the whole process by
    # DeepSpeed's memory-efficient ZeRO-3 linear ("this will persist unless manually reset",
    # deepspeed/runtime/zero/partition_parameters.py). So that every row runs as it would alone
    # in its process, each row is built from, and runs with, its own F.linear.
    pristine_linear = F.linear
    steps, shares, build_seconds, linears = [], [], [], []
    for row in rows:
        torch.set_num_threads(row["threads"])
        F.linear = pristine_linear
        started = time.perf_counter()
        step, data_rank = build_step(row, shape, rank, world_size)
        build_seconds.append(time.perf_counter() - started)
        linears.append(F.linear)
        steps.append(step)
        shares.append([rank_share(batch, data_rank, row["micro_batch"], row["grad_accum"])
                       for batch in pool])
    losses: list[list[float]] = [[] for _ in rows]
    threads = [0] * len(rows)
    waiting_cpu, alone_seconds = 0.0, 0.0  # other ranks' CPU time while rank 0 runs plain rows

    def run(index: int, count: int) -> tuple[float, float]:
        """`count` steps of row `index`; their mean wall time, and CPU time of this process."""
        nonlocal waiting_cpu, alone_seconds
        torch.set_num_threads(rows[index]["threads"])
        threads[index] = torch.get_num_threads()
        F.linear = linears[index]
        if distributed:
            dist.barrier()
        began, cpu = time.perf_counter(), time.process_time()
        if steps[index] is not None:
            for _ in range(count):
                batch = shares[index][len(losses[index]) % POOL]
                losses[index].append(steps[index](batch))
        seconds, cpu_seconds = time.perf_counter() - began, time.process_time() - cpu
        if rows[index]["engine"] == "plain" and world_size > 1:
            dist.barrier()  # the other ranks wait here (blocked, idle) while rank 0 runs it
            waiting_cpu += time.process_time() - cpu if rank else 0.0
            alone_seconds += seconds if rank == 0 else 0.0
        return seconds / count, cpu_seconds / count

    for index in range(len(rows)):
        run(index, launch["warmup"])
    rounds = [[run(index, launch["steps"]) for index in range(len(rows))]
              for _ in range(launch["repeats"])]
    timings = torch.tensor(rounds, dtype=torch.float64).permute(2, 1, 0).contiguous()
    wall, cpu = timings[0], timings[1]  # [row, round] each
    totals = torch.tensor([waiting_cpu, alone_seconds], dtype=torch.float64)
    if distributed:  # wall: the slowest rank's (steps end in a collective anyway; plain rows:
        dist.all_reduce(wall, op=dist.ReduceOp.MAX)  # rank 0's, the others sit at ~0)
        dist.all_reduce(cpu, op=dist.ReduceOp.SUM)  # CPU: all the ranks together
        dist.all_reduce(totals, op=dist.ReduceOp.MAX)
    if rank == 0:
        result = {"rows": [{"key": row["key"], "threads": threads[index],
                            "linear": getattr(linears[index], "__qualname__", str(linears[index])),
                            "build_seconds": build_seconds[index],
                            "round_seconds_per_step": wall[index].tolist(),
                            "step_seconds": wall[index].min().item(),
                            "round_cpu_seconds_per_step": cpu[index].tolist(),
                            "cpu_seconds": cpu[index].min().item(),
                            "first_loss": losses[index][0], "last_loss": losses[index][-1],
                            "steps_run": len(losses[index])}
                           for index, row in enumerate(rows)],
                  "waiting_ranks_cpu_seconds": totals[0].item(),
                  "plain_rows_alone_seconds": totals[1].item()}
        Path(launch["out"]).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if distributed:
        dist.barrier()
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# Parent side: launch every configuration, compare, report
# ---------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine (all cores, every process) has been busy: /proc/stat."""
    ticks = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, irq, softirq = ticks[0], ticks[1], ticks[2], ticks[5], ticks[6]
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (the launches)."""
    return sum(usage.ru_utime + usage.ru_stime for usage in
               (resource.getrusage(resource.RUSAGE_SELF),
                resource.getrusage(resource.RUSAGE_CHILDREN)))


class OtherLoad:
    """Cores used on average by processes that are not ours while the block runs: machine-wide
    busy time (/proc/stat) less our own and our finished children's CPU time."""

    def __enter__(self) -> OtherLoad:
        self.busy, self.own, self.wall = busy_cpu_seconds(), own_cpu_seconds(), time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        other = (busy_cpu_seconds() - self.busy) - (own_cpu_seconds() - self.own)
        self.cores = max(0.0, other / (time.monotonic() - self.wall))


def launch(spec: dict[str, Any], work: Path, timeout: float) -> dict[str, Any]:
    """Run one launch (its rows in one process or one torchrun job); returns the worker's JSON."""
    spec_path = work / f"launch{spec['processes']}.json"
    spec["out"] = str(work / f"launch{spec['processes']}.result.json")
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    env = {name: value for name, value in os.environ.items() if name not in RANK_VARIABLES}
    env["PYTHONUNBUFFERED"] = "1"
    script = [str(Path(__file__).resolve()), "--worker", str(spec_path)]
    if spec["processes"] == 1:
        command = [sys.executable, *script]
    else:
        env["OMP_NUM_THREADS"] = "1"  # as torchrun would, without its warning
        command = [sys.executable, "-m", "torch.distributed.run",
                   f"--nproc-per-node={spec['processes']}", "--master-addr=127.0.0.1",
                   f"--master-port={_free_port()}", *script]
    started = time.perf_counter()
    with OtherLoad() as other:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)
    if done.returncode != 0 or not Path(spec["out"]).is_file():
        raise RuntimeError(f"the {spec['processes']}-process launch failed (exit "
                           f"{done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    result = json.loads(Path(spec["out"]).read_text(encoding="utf-8"))
    result["wall_seconds"] = time.perf_counter() - started
    result["other_load_cores"] = other.cores
    return result


def plan(args: argparse.Namespace, shape: dict[str, int]) -> list[dict[str, Any]]:
    """The launches and their rows; `reference` and `like` name each row's comparison rows."""
    mb, ga = args.micro_batch, args.grad_accum
    if ga % 2 == 0:
        dp_mb, dp_ga = mb, ga // 2
    elif mb % 2 == 0:
        dp_mb, dp_ga = mb // 2, ga
    else:
        raise SystemExit("2 data-parallel ranks need an even --grad-accum or --micro-batch")
    default_threads = torch.get_num_threads()

    def row(key: str, label: str, name: str, engine: str, processes: int, stages: int,
            micro_batch: int, grad_accum: int, threads: int, like: str) -> dict[str, Any]:
        data_parallel = processes // stages if engine != "plain" else 1
        return {"key": key, "label": label, "name": name, "engine": engine,
                "processes": processes, "stages": stages, "data_parallel": data_parallel,
                "micro_batch": micro_batch, "grad_accum": grad_accum, "threads": threads,
                "global_sequences": data_parallel * micro_batch * grad_accum,
                "split": f"{data_parallel} x {micro_batch} x {grad_accum}", "like": like}

    common = {"shape": shape, "global_sequences": mb * ga, "seed": args.seed,
              "warmup": args.warmup, "steps": args.steps, "repeats": args.repeats}
    one = {**common, "processes": 1, "title": "1 process (python --worker), rounds interleaved",
           "reference": "plain", "rows": [
               row("plain", "(a)", "plain PyTorch", "plain", 1, 1, mb, ga, default_threads,
                   "plain"),
               row("zero3", "(b)", "zero3 engine, 1 rank", "zero3", 1, 1, mb, ga,
                   default_threads, "plain"),
               row("pipeline", "(c)", "pipeline engine, 1 stage", "pipeline", 1, 1, mb, ga,
                   default_threads, "plain"),
               # One thread each: a busy machine disturbs single-threaded steps far less.
               row("plain_1t_solo", "(a')", "plain PyTorch, 1 thread", "plain", 1, 1, mb, ga,
                   1, "plain_1t_solo"),
               row("zero3_1t", "(b)", "zero3 engine, 1 rank, 1 thread", "zero3", 1, 1, mb, ga,
                   1, "plain_1t_solo"),
               row("pipeline_1t", "(c)", "pipeline engine, 1 stage, 1 thread", "pipeline", 1,
                   1, mb, ga, 1, "plain_1t_solo")]}
    two = {**common, "processes": 2,
           "title": "torchrun, 2 processes, rounds interleaved (plain rows: rank 0 alone, rank 1 "
                    "blocked in a barrier)",
           "reference": "plain_2p", "rows": [
               row("plain_2p", "(a)", "plain PyTorch", "plain", 2, 1, mb, ga, default_threads,
                   "plain_2p"),
               row("plain_1t", "(a')", "plain PyTorch, 1 thread", "plain", 2, 1, mb, ga, 1,
                   "plain_1t"),
               row("plain_1t_share", "(a')", "plain, 1 thread, 1 rank's share", "plain", 2, 1,
                   dp_mb, dp_ga, 1, "plain_1t_share"),
               row("zero3_dp2", "(d)", "zero3 engine, 2 DP ranks", "zero3", 2, 1, dp_mb, dp_ga,
                   1, "plain_1t_share"),
               row("pipeline_pp2", "(d)", "pipeline engine, 2 stages", "pipeline", 2, 2, mb, ga,
                   1, "plain_1t")]}
    return [launch for launch in (one, two) if launch["processes"] in args.processes]


def per_round(row: dict[str, Any], reference: dict[str, Any]) -> list[float]:
    return [mine / theirs for mine, theirs in zip(row["round_seconds_per_step"],
                                                  reference["round_seconds_per_step"],
                                                  strict=True)]


def loss_check(launches: list[dict[str, Any]], global_sequences: int) -> dict[str, Any]:
    """Rows that step on the same global batch from the same weights must report the same
    first and last losses (the engines do the same work as plain PyTorch)."""
    rows = [row for spec in launches for row in spec["rows"]
            if row["global_sequences"] == global_sequences]
    first, last = rows[0]["first_loss"], rows[0]["last_loss"]
    worst = max(max(abs(row["first_loss"] - first), abs(row["last_loss"] - last))
                for row in rows)
    return {"rows": len(rows), "first_loss": first, "last_loss": last, "max_difference": worst}


def device() -> dict[str, Any]:
    return {"device": "cpu", **machine(("torch", "deepspeed", "numpy")),
            "torch_default_threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--n-layers", type=int, default=4)
    parser.add_argument("--n-heads", type=int, default=4)
    parser.add_argument("--n-kv-heads", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--micro-batch", type=int, default=8, help="sequences per micro-batch")
    parser.add_argument("--grad-accum", type=int, default=4,
                        help="micro-batches per step in (a); the global batch is their product")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first, per row")
    parser.add_argument("--steps", type=int, default=2, help="steps per row and timed round")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds; the best counts")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic batches")
    parser.add_argument("--processes", type=int, nargs="+", choices=(1, 2), default=[1, 2],
                        help="which launches to run")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per launch")
    parser.add_argument("--out", type=Path, help="the JSON to write (default: "
                        "bench/results/engine_overhead_<host>.json)")
    args = parser.parse_args()
    if args.worker:
        run_worker(args.worker)
        return

    shape = {"vocab_size": args.vocab_size, "d_model": args.d_model, "n_layers": args.n_layers,
             "n_heads": args.n_heads, "n_kv_heads": args.n_kv_heads, "seq_len": args.seq_len}
    launches = plan(args, shape)
    with OtherLoad() as idle:
        time.sleep(2.0)
    if idle.cores > 0.1:
        print(f"warning: other processes keep {idle.cores:.1f} of {os.cpu_count()} cores busy "
              "(/proc/stat); the timings will be noisy and the 2-thread rows hit hardest",
              flush=True)
    load_before, started = os.getloadavg(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="siyada-engine-bench-") as tmp:
        for spec in launches:
            print(f"running: {spec['title']} ...", flush=True)
            result = launch(spec, Path(tmp), args.timeout)
            if result["other_load_cores"] > 0.1:
                print(f"warning: other processes used {result['other_load_cores']:.1f} cores "
                      "on average during this launch", flush=True)
            measured = {row["key"]: row for row in result.pop("rows")}
            spec["result"] = result
            for row in spec["rows"]:
                row.update(measured[row["key"]])
                row["tokens_per_step"] = row["global_sequences"] * args.seq_len
                row["tokens_per_s"] = row["tokens_per_step"] / row["step_seconds"]
            by_key = {row["key"]: row for row in spec["rows"]}
            for row in spec["rows"]:
                plain, like = by_key[spec["reference"]], by_key[row["like"]]
                row["vs_plain"] = row["step_seconds"] / plain["step_seconds"]
                row["vs_like"] = (row["step_seconds"] / like["step_seconds"]
                                  if row["like"] != row["key"] else None)
                # CPU time per token (all processes) over the like row's: the work overhead,
                # which waiting and a busy machine disturb far less than wall time.
                row["cpu_per_token_vs_like"] = (
                    row["cpu_seconds"] / row["tokens_per_step"]
                    / (like["cpu_seconds"] / like["tokens_per_step"])
                    if row["like"] != row["key"] else None)
                # The same ratio within each round (same minute of the VM's noise): its median
                # should agree with the best-of ratio above when the numbers are trustworthy.
                row["vs_plain_per_round"] = per_round(row, plain)
                row["vs_plain_median_round"] = statistics.median(row["vs_plain_per_round"])
                if row["vs_like"] is not None:
                    row["vs_like_median_round"] = statistics.median(per_round(row, like))

    from pretrain.nn.model import count_parameters

    cfg = make_config(shape, "plain", 1, args.micro_batch, args.grad_accum).model
    tokens_per_step = args.micro_batch * args.grad_accum * args.seq_len
    results = {
        "device": device(), "other_load_cores_before": idle.cores,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(), "total_seconds": time.perf_counter() - started,
        "shape": {**shape, "ffn_dim": cfg.ffn_dim, "tie_embeddings": cfg.tie_embeddings,
                  "parameters": count_parameters(cfg), "precision": "fp32",
                  "micro_batch": args.micro_batch, "grad_accum": args.grad_accum,
                  "global_sequences": args.micro_batch * args.grad_accum,
                  "tokens_per_step": tokens_per_step},
        "timing": {"warmup_steps": args.warmup, "steps_per_round": args.steps,
                   "rounds": args.repeats, "statistic": "best round's mean step time; rounds "
                   "interleave the rows of one launch"},
        "loss_check": loss_check(launches, args.micro_batch * args.grad_accum),
        "notes": NOTES,
        "launches": [{key: spec[key] for key in ("title", "processes", "reference", "result",
                                                  "rows")} for spec in launches],
    }

    dev = results["device"]
    print(f"\n{results['shape']['parameters']:,} parameters (d_model {args.d_model}, "
          f"{args.n_layers} layers, vocab {args.vocab_size}), seq_len {args.seq_len}, "
          f"{tokens_per_step:,} tokens per step, fp32; {dev['cpu']} ({dev['cores']} cores), "
          f"torch {dev['torch']}, deepspeed {dev['deepspeed']}")
    print(f"{'':<5}{'configuration':<36}{'procs x thr':>12}{'split':>12}{'step ms':>9}"
          f"{'CPU ms':>8}{'tokens/s':>10}{'vs (a)':>8}{'(med)':>7}{'vs like':>9}{'(med)':>7}"
          f"{'CPU/tok vs like':>16}")
    for spec in launches:
        print(f"-- {spec['title']}; other processes meanwhile: "
              f"{spec['result']['other_load_cores']:.2f} cores")
        for row in spec["rows"]:
            vs_like, like_median, cpu_like = "", "", ""
            if row["vs_like"] is not None:
                vs_like = f"{row['vs_like']:.2f}x"
                like_median = f"{row['vs_like_median_round']:.2f}x"
                cpu_like = f"{row['cpu_per_token_vs_like']:.2f}x"
            procs = 1 if row["engine"] == "plain" else row["processes"]
            print(f"{row['label']:<5}{row['name']:<36}"
                  f"{f'{procs} x ' + str(row['threads']):>12}{row['split']:>12}"
                  f"{row['step_seconds'] * 1e3:>9.1f}{row['cpu_seconds'] * 1e3:>8.0f}"
                  f"{row['tokens_per_s']:>10,.0f}"
                  f"{row['vs_plain']:>7.2f}x{row['vs_plain_median_round']:>6.2f}x{vs_like:>9}"
                  f"{like_median:>7}{cpu_like:>16}")
    loss = results["loss_check"]
    print(f"loss check: first/last step loss of every row on the full global batch vs (a): "
          f"{loss['first_loss']:.5f} / {loss['last_loss']:.5f}, largest difference "
          f"{loss['max_difference']:.1e} ({loss['rows']} rows)")
    for note in NOTES:
        print(textwrap.fill(note, width=100, subsequent_indent="  "))
    out = write_results("engine_overhead", results, args.out)
    print(f"wrote {out} ({results['total_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
