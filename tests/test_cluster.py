"""Grids on a cluster (sidlib.book.cluster): submitit's local executor stands in for SLURM."""
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from sidlib.book import cluster, experiments
from sidlib.train import train
from helpers import config

BASE = config(method="sid", depth=2, train_subset=64, test_subset=64, batch_size=32, epochs=2)


def test_a_grid_submitted_as_jobs_resumes_from_checkpoints_and_is_read_back(tmp_path, monkeypatch):
    out = tmp_path / "results"
    # seed 0 was interrupted after its first epoch: its job must resume from that checkpoint
    train(replace(BASE, seed=0, epochs=1), checkpoint_dir=cluster.checkpoint_dir(out, "sid", 0))
    monkeypatch.setenv(cluster.ENVIRONMENT, cluster.describe("local", {"timeout_min": 10}))
    said = []
    submitted = experiments.run_grid(BASE, ["sid"], [0, 1], out, log=said.append)
    assert any("submitted 2 runs to local" in line for line in said)
    assert [r["config"]["seed"] for r in submitted] == [0, 1]
    assert submitted[0].get("resumed_from_checkpoint") and "resumed_from_checkpoint" not in submitted[1]
    for run in submitted:  # as if trained here, uninterrupted
        here = train(replace(BASE, seed=run["config"]["seed"]))
        assert [e["train_loss"] for e in run["history"]] == pytest.approx([e["train_loss"] for e in here["history"]], rel=1e-5)
        assert run["config"] == here["config"] and run["command"] == experiments.cli_command(replace(BASE, seed=run["config"]["seed"]))
    monkeypatch.delenv(cluster.ENVIRONMENT)
    said.clear()
    read_back = experiments.run_grid(BASE, ["sid"], [0, 1], out, reuse=True, log=said.append)  # the notebook's second look
    assert read_back == [json.loads(experiments.run_path(out, "sid", s).read_text()) for s in (0, 1)] == submitted
    assert all("read back" in line for line in said)


@pytest.mark.parametrize("arguments, named", [(["--cluster-option", "timeout_min=5"], "needs --cluster"),
                                              (["--cluster", "local", "--cluster-option", "timeout"], "KEY=VALUE")])
def test_the_runner_refuses_cluster_options_it_cannot_use_in_one_line(tmp_path, arguments, named):
    done = subprocess.run([sys.executable, "-m", "sidlib.book", "run", "notebooks/02_sid_vs_bp.ipynb", *arguments],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and named in done.stderr, done.stderr
