"""Slurm hostlists, rendezvous variables and the pipeline x data-parallel layout."""

from __future__ import annotations

import pytest
from deepspeed.runtime.pipe.topology import PipeDataParallelTopology

from pretrain.config import ConfigError
from pretrain.parallel.topology import (
    ParallelLayout,
    Topology,
    expand_hostlist,
    make_layout,
    rendezvous_env,
    topology_from_env,
)

# ---------------------------------------------------------------------------------------------
# expand_hostlist
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("nodelist", "hosts"), [
    ("login2", ["login2"]),
    ("gpu[001-003,007],login2",
     ["gpu001", "gpu002", "gpu003", "gpu007", "login2"]),
    ("a1,b2", ["a1", "b2"]),
    ("n[8-11]", ["n8", "n9", "n10", "n11"]),
    ("n[08-11]", ["n08", "n09", "n10", "n11"]),
    ("n[5]", ["n5"]),
    ("rack[1-2]-n[01-02]", ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]),
    ("[1-2]x", ["1x", "2x"]),
    ("gpu[1,3],cpu[10-11]-ib", ["gpu1", "gpu3", "cpu10-ib", "cpu11-ib"]),
    (" node[1-2]\n", ["node1", "node2"]),
])
def test_expand_hostlist(nodelist: str, hosts: list[str]) -> None:
    assert expand_hostlist(nodelist) == hosts


@pytest.mark.parametrize("nodelist", [
    "gpu[001-003", "gpu001]", "gpu[1-[2]]", "a[3-1]", "a[]", "a[x]", "a[1-]", "a[1,,2]",
    "a,,b", "", "  ",
])
def test_expand_hostlist_rejects_malformed(nodelist: str) -> None:
    with pytest.raises(ValueError, match="malformed Slurm hostlist") as error:
        expand_hostlist(nodelist)
    assert repr(nodelist) in str(error.value)


# ---------------------------------------------------------------------------------------------
# rendezvous_env
# ---------------------------------------------------------------------------------------------

LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                 "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID",
                 "SLURM_NTASKS_PER_NODE", "SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_NODELIST",
                 "SLURM_STEP_NODELIST", "SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE",
                 "SLURM_NODEID", "SLURM_STEP_ID", "SLURM_STEP_NUM_TASKS")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A clean slate: none of the launchers' variables, whatever the test runner inherited."""
    for name in LAUNCHER_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _srun(env: pytest.MonkeyPatch, procid: int, job_id: str = "123456",
          nodelist: str = "gpu[007-008]") -> None:
    """What srun exports to task `procid` of a 2-node x 4-task step."""
    env.setenv("SLURM_STEP_ID", "0")
    env.setenv("SLURM_PROCID", str(procid))
    env.setenv("SLURM_NTASKS", "8")
    env.setenv("SLURM_STEP_NUM_TASKS", "8")
    env.setenv("SLURM_LOCALID", str(procid % 4))
    env.setenv("SLURM_STEP_TASKS_PER_NODE", "4(x2)")
    env.setenv("SLURM_NODEID", str(procid // 4))
    env.setenv("SLURM_JOB_ID", job_id)
    env.setenv("SLURM_JOB_NODELIST", nodelist)


def test_srun_tasks_agree_on_rendezvous(env: pytest.MonkeyPatch) -> None:
    seen = []
    for procid in (0, 5):
        _srun(env, procid)
        topology = topology_from_env()
        assert topology == Topology(rank=procid, world_size=8, local_rank=procid % 4,
                                    local_world_size=4)
        rendezvous = rendezvous_env(topology)
        assert rendezvous["RANK"] == str(procid)
        assert rendezvous["WORLD_SIZE"] == "8"
        assert rendezvous["LOCAL_RANK"] == str(procid % 4)
        assert rendezvous["LOCAL_WORLD_SIZE"] == "4"
        seen.append((rendezvous["MASTER_ADDR"], rendezvous["MASTER_PORT"]))
    assert seen[0] == seen[1] == ("gpu007", str(20000 + 123456 % 10000))


def test_the_batch_script_itself_is_one_process_not_rank_0_of_the_job(
        env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    # What an sbatch script with --ntasks=2 sees outside srun (read off the local cluster).
    env.setenv("SLURM_NTASKS", "2")
    env.setenv("SLURM_PROCID", "0")
    env.setenv("SLURM_TASKS_PER_NODE", "2")
    env.setenv("SLURM_JOB_ID", "7")
    assert topology_from_env() == Topology(rank=0, world_size=1, local_rank=0,
                                           local_world_size=1)
    assert "not started by srun" in capsys.readouterr().err


def test_uneven_tasks_per_node_give_each_node_its_own_local_world(
        env: pytest.MonkeyPatch) -> None:
    # 10 tasks on 3 nodes: srun places 4, 4 and 2 (without --ntasks-per-node).
    env.setenv("SLURM_STEP_ID", "0")
    env.setenv("SLURM_NTASKS", "10")
    env.setenv("SLURM_STEP_TASKS_PER_NODE", "4(x2),2")
    for node, procid, expected in ((0, 1, 4), (1, 6, 4), (2, 9, 2)):
        env.setenv("SLURM_PROCID", str(procid))
        env.setenv("SLURM_NODEID", str(node))
        assert topology_from_env().local_world_size == expected
    env.setenv("SLURM_STEP_TASKS_PER_NODE", "four")
    with pytest.raises(ValueError, match="SLURM_STEP_TASKS_PER_NODE"):
        topology_from_env()


def test_slurm_port_depends_on_job(env: pytest.MonkeyPatch) -> None:
    ports = set()
    for job_id in ("1000", "1001", "98765"):
        _srun(env, 0, job_id=job_id)
        port = int(rendezvous_env(topology_from_env())["MASTER_PORT"])
        assert 20000 <= port < 30000
        ports.add(port)
    assert len(ports) == 3


def test_old_slurm_nodelist_name(env: pytest.MonkeyPatch) -> None:
    _srun(env, 0)
    env.delenv("SLURM_JOB_NODELIST")
    env.setenv("SLURM_NODELIST", "rack[2-3]-n[01-02]")
    assert rendezvous_env(topology_from_env())["MASTER_ADDR"] == "rack2-n01"


def test_step_nodelist_wins_over_job_nodelist(env: pytest.MonkeyPatch) -> None:
    # A step running on the second half of the allocation has its rank 0 on node 3, not 1.
    _srun(env, 0, nodelist="n[1-4]")
    env.setenv("SLURM_STEP_NODELIST", "n[3-4]")
    assert rendezvous_env(topology_from_env())["MASTER_ADDR"] == "n3"


def test_explicit_master_wins_over_slurm(env: pytest.MonkeyPatch) -> None:
    _srun(env, 3)
    env.setenv("MASTER_ADDR", "head.example")
    env.setenv("MASTER_PORT", "29555")
    rendezvous = rendezvous_env(topology_from_env())
    assert (rendezvous["MASTER_ADDR"], rendezvous["MASTER_PORT"]) == ("head.example", "29555")


def test_torchrun_wins_over_slurm(env: pytest.MonkeyPatch) -> None:
    # torchrun started by srun: one srun task per node, torchrun spawns the ranks.
    _srun(env, 0)
    env.setenv("RANK", "6")
    env.setenv("WORLD_SIZE", "16")
    env.setenv("LOCAL_RANK", "2")
    env.setenv("LOCAL_WORLD_SIZE", "8")
    env.setenv("MASTER_ADDR", "10.0.0.9")
    env.setenv("MASTER_PORT", "29500")
    assert rendezvous_env(topology_from_env()) == {
        "RANK": "6", "WORLD_SIZE": "16", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "8",
        "MASTER_ADDR": "10.0.0.9", "MASTER_PORT": "29500",
    }


def test_single_process_gets_localhost_and_a_free_port(env: pytest.MonkeyPatch) -> None:
    # Even inside an allocation: a lone process must not try to meet itself on another node.
    env.setenv("SLURM_JOB_ID", "42")
    env.setenv("SLURM_JOB_NODELIST", "gpu[001-002]")
    rendezvous = rendezvous_env(topology_from_env())
    assert rendezvous["WORLD_SIZE"] == "1"
    assert rendezvous["MASTER_ADDR"] == "127.0.0.1"
    assert 0 < int(rendezvous["MASTER_PORT"]) < 65536
    assert rendezvous["MASTER_PORT"] != str(20000 + 42)


def test_multi_process_without_port_or_slurm_fails_clearly(env: pytest.MonkeyPatch) -> None:
    env.setenv("RANK", "0")
    env.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="MASTER_PORT is not set"):
        rendezvous_env(topology_from_env())


# ---------------------------------------------------------------------------------------------
# ParallelLayout
# ---------------------------------------------------------------------------------------------

SHAPES = [(1, 1), (1, 4), (2, 1), (2, 2), (4, 2), (8, 4), (3, 5)]


@pytest.mark.parametrize(("stages", "dp"), SHAPES)
def test_layout_matches_deepspeed(stages: int, dp: int) -> None:
    deepspeed = PipeDataParallelTopology(num_pp=stages, num_dp=dp)
    layout = ParallelLayout(world_size=stages * dp, pipeline_stages=stages)
    assert layout.data_parallel == dp
    for rank in range(stages * dp):
        coord = deepspeed.get_coord(rank)
        assert (layout.stage_of(rank), layout.data_rank_of(rank)) == (coord.pipe, coord.data)
    for stage in range(stages):
        assert layout.ranks_of_stage(stage) == [deepspeed.get_rank(pipe=stage, data=d)
                                                for d in range(dp)]
    for d in range(dp):
        assert layout.ranks_of_data_rank(d) == [deepspeed.get_rank(pipe=s, data=d)
                                                for s in range(stages)]


def test_layout_rejects_out_of_range() -> None:
    layout = ParallelLayout(world_size=4, pipeline_stages=2)
    with pytest.raises(ValueError, match="rank 4"):
        layout.stage_of(4)
    with pytest.raises(ValueError, match="stage 2"):
        layout.ranks_of_stage(2)
    with pytest.raises(ValueError):
        ParallelLayout(world_size=6, pipeline_stages=4)


def test_describe_pipeline() -> None:
    assert ParallelLayout(world_size=4, pipeline_stages=2).describe() == (
        "layout: 4 ranks = 2 pipeline stages x 2 data-parallel ranks\n"
        "  pipeline 0 (data-parallel rank 0): ranks 0 -> 2\n"
        "  pipeline 1 (data-parallel rank 1): ranks 1 -> 3\n"
        "  stage 0: ranks 0, 1 | stage 1: ranks 2, 3")


def test_describe_pure_data_parallel() -> None:
    text = ParallelLayout(world_size=4, pipeline_stages=1).describe()
    assert text.splitlines()[0] == "layout: 4 ranks, pure data parallel"
    assert "0, 1, 2, 3" in text
    assert "pipeline 0" not in text
    assert ParallelLayout(1, 1).describe().startswith("layout: 1 rank, pure data parallel")


def test_describe_stays_short_for_big_jobs() -> None:
    text = ParallelLayout(world_size=512, pipeline_stages=8).describe()
    lines = text.splitlines()
    assert lines[0] == "layout: 512 ranks = 8 pipeline stages x 64 data-parallel ranks"
    assert "  pipeline 3 (data-parallel rank 3): ranks 3 -> 67 -> 131 -> 195 -> 259 -> 323 " \
           "-> 387 -> 451" in lines
    assert "56 more pipelines" in text
    assert "stage 7: ranks 448-511" in text
    assert len(lines) < 15


# ---------------------------------------------------------------------------------------------
# make_layout
# ---------------------------------------------------------------------------------------------


def test_make_layout_accepts_valid() -> None:
    assert make_layout(8, 2, n_layers=4) == ParallelLayout(world_size=8, pipeline_stages=2)
    assert make_layout(3, 1, n_layers=1).data_parallel == 3


def test_make_layout_rejects_indivisible_world() -> None:
    with pytest.raises(ConfigError, match="parallel.pipeline_stages") as error:
        make_layout(6, 4, n_layers=8)
    message = str(error.value)
    assert "6 ranks" in message and "multiple of 4" in message
    assert "one of 1, 2, 3, 6" in message


def test_make_layout_rejects_more_stages_than_layers() -> None:
    with pytest.raises(ConfigError, match="parallel.pipeline_stages") as error:
        make_layout(8, 8, n_layers=4)
    assert "model.n_layers=4" in str(error.value)


def test_make_layout_rejects_zero_stages() -> None:
    with pytest.raises(ConfigError, match="parallel.pipeline_stages"):
        make_layout(4, 0, n_layers=4)


def test_describe_names_the_nodes_and_the_stages_that_cross_them() -> None:
    layout = ParallelLayout(world_size=4, pipeline_stages=2)
    text = layout.describe(["n1", "n1", "n2", "n2"])
    assert text.splitlines()[-2:] == ["  2 nodes, ranks per node: n1: ranks 0, 1 | n2: ranks 2, 3",
                                      "  stages that cross nodes: 0 -> 1 (n1 -> n2)"]
    # Stage-major ranks on a node each: both stages of a pipeline share its node.
    text = ParallelLayout(world_size=4, pipeline_stages=2).describe(["n1", "n2", "n1", "n2"])
    assert text.endswith("  every pipeline stays on one node")
    assert ParallelLayout(2, 1).describe(["a", "b"]).endswith(
        "  2 nodes, ranks per node: a: rank 0 | b: rank 1")
    with pytest.raises(ValueError, match="3 host names for 2 ranks"):
        ParallelLayout(2, 1).describe(["a", "b", "c"])
