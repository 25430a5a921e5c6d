"""A scaling-law ladder end to end on the local Slurm cluster: plan -> submit -> collect -> fit."""

from __future__ import annotations

import csv
import json
import re

import pytest

from pretrain.scaling.plan import LadderDesign, TrainingRule, make_plan, write_plan
from tests.cli_runs import TINY, ok, prepare_dataset, pretrain
from tests.slurm_jobs import cluster_conf, finished

pytestmark = [pytest.mark.e2e, pytest.mark.slurm]


def test_a_three_run_ladder_is_planned_submitted_collected_and_fitted(tmp_path):
    env = {"SLURM_CONF": str(cluster_conf())}
    dataset = prepare_dataset(tmp_path)
    experiment = tmp_path / "ladder"
    # Three tiny models at 0.2 tokens per parameter: 21 to 77 steps each, seconds on a CPU.
    write_plan(make_plan(experiment, LadderDesign([5e4, 2e5, 4e5], tokens_per_param=(0.2,)),
                         None, [*TINY, f"data.dataset={dataset}"],
                         training_rule=TrainingRule(min_steps=4)))
    names = [run["name"] for run in json.loads((experiment / "manifest.json").read_text())["runs"]]

    submitted = ok(pretrain("scaling", "submit", "--experiment", str(experiment),
                            "--gpus-per-node", "0", cwd=tmp_path, env=env)).stdout
    assert "0 of 3 runs finished; submitting the other 3" in submitted
    assert "--array=0-2" in submitted
    job = re.search(r"^submitted job (\d+):", submitted, flags=re.MULTILINE)[1]
    finished(job, env)

    collected = ok(pretrain("scaling", "collect", "--experiment", str(experiment),
                            cwd=tmp_path)).stdout
    assert "3 finished runs" in collected and "not finished" not in collected
    with open(experiment / "runs.csv", newline="") as table:
        rows = list(csv.DictReader(table))
    assert [row["run"] for row in rows] == names
    assert {"N", "D", "C", "loss", "loss_ary_Latn", "loss_zgh_Tfng"} <= set(rows[0])
    assert all(float(row["C"]) == pytest.approx(6 * float(row["N"]) * float(row["D"]))
               for row in rows)

    # Resumable: finished runs are never submitted again.
    again = ok(pretrain("scaling", "submit", "--experiment", str(experiment),
                        "--gpus-per-node", "0", cwd=tmp_path, env=env)).stdout
    assert "3 of 3 runs finished: nothing to submit" in again

    # The table flows into the fitter, which says plainly that three runs cannot fix five
    # parameters (a real ladder has a dozen or more).
    refused = pretrain("scaling", "fit", "--csv", str(experiment / "runs.csv"),
                       "--loss-column", "loss_ary_Latn", cwd=tmp_path)
    assert refused.returncode == 2
    assert "3 runs with 3 distinct model sizes" in refused.stderr
    assert "needs at least 5 runs" in refused.stderr


def test_a_wsd_ladder_runs_its_decay_branches_after_their_main_runs(tmp_path):
    env = {"SLURM_CONF": str(cluster_conf())}
    dataset = prepare_dataset(tmp_path)
    experiment = tmp_path / "wsd"
    # Two sizes, each trained to 0.1 and 0.2 tokens per parameter: one main WSD run per size,
    # and one decay branch that starts from the main run's stable phase.
    write_plan(make_plan(experiment, LadderDesign([5e4, 2e5], tokens_per_param=(0.1, 0.2)),
                         None, [*TINY, f"data.dataset={dataset}", "optim.schedule=wsd"],
                         training_rule=TrainingRule(min_steps=4)))
    runs = json.loads((experiment / "manifest.json").read_text())["runs"]
    branches = {run["name"]: run["resume_from"] for run in runs if run["resume_from"]}
    assert len(branches) == 2

    submitted = ok(pretrain("scaling", "submit", "--experiment", str(experiment),
                            "--gpus-per-node", "0", cwd=tmp_path, env=env)).stdout
    mains_job, branches_job = re.findall(r"^submitted job (\d+):", submitted, flags=re.MULTILINE)
    assert f"#SBATCH --dependency=afterok:{mains_job}" in submitted
    finished(branches_job, env)

    collected = ok(pretrain("scaling", "collect", "--experiment", str(experiment),
                            cwd=tmp_path)).stdout
    assert "4 finished runs" in collected and "not finished" not in collected
    for name, source in branches.items():  # each branch began after its main run's checkpoint
        metrics = (experiment / "runs" / name / "metrics.jsonl").read_text().splitlines()
        assert json.loads(metrics[0])["step"] == source["step"] + 1
