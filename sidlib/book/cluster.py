"""Grids that outgrow one machine: every pending run of a grid as one job on a cluster, through submitit.

    python -m sidlib.book run notebooks/02_sid_vs_bp.ipynb --preset paper --cluster slurm \\
        --cluster-option slurm_partition=gpu --cluster-option gpus_per_node=1 --cluster-option timeout_min=720

The runner puts the executor's description in the environment (``SIDBOOK_CLUSTER``, JSON) of the
notebook it executes; ``experiments.run_grid`` then hands each run that has no results file yet to
``submit_runs`` instead of training it in the notebook's process, waits for the jobs, and reads their
results files back as ``reuse_runs`` does. A job trains with a checkpoint after every epoch
(``checkpoint_dir``), and a job that finds its run's checkpoint resumes from it, so a grid that
was interrupted, preempted or timed out continues where each run stopped when the same command is
given again. Options are submitit's (``timeout_min``, ``slurm_partition``, ``gpus_per_node``,
``cpus_per_task``, ``mem_gb``, ...); ``--cluster local`` runs the jobs as local processes (tests).
Logs and checkpoints live in ``<results folder>/.cluster/``, which git ignores.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..config import TrainConfig

ENVIRONMENT = "SIDBOOK_CLUSTER"  # JSON: {"cluster": "slurm" | "local", <submitit option>: value, ...}
CLUSTERS = ("slurm", "local")
WORK_FOLDER = ".cluster"  # beside a grid's results files


def describe(cluster: str, options: dict) -> str:
    """The environment value that asks ``run_grid`` to submit to ``cluster`` with submitit ``options``."""
    if cluster not in CLUSTERS:
        raise ValueError(f"unknown cluster {cluster!r}; choose one of: {', '.join(CLUSTERS)}")
    return json.dumps({"cluster": cluster, **options})


def requested() -> dict | None:
    """The cluster the runner asked for, or None (train in this process)."""
    text = os.environ.get(ENVIRONMENT)
    return json.loads(text) if text else None


def executor(folder: Path, description: dict):
    """A submitit executor writing its logs to ``folder``."""
    import submitit

    options = dict(description)
    cluster = options.pop("cluster")
    if cluster == "local":
        made = submitit.LocalExecutor(folder=folder)
    elif cluster == "slurm":
        made = submitit.AutoExecutor(folder=folder, cluster="slurm")
    else:
        raise ValueError(f"unknown cluster {cluster!r}; choose one of: {', '.join(CLUSTERS)}")
    made.update_parameters(**options)
    return made


def checkpoint_dir(out_dir: Path, variant: str, seed: int) -> Path:
    return Path(out_dir) / WORK_FOLDER / "checkpoints" / f"{variant}-seed{seed}"


def train_run(config: dict, variant: str, result_path: str, checkpoint_folder: str, command: str, cwd: str,
              analyse=None) -> dict:
    """One job: train ``config`` (resuming from its checkpoint if one is there), write its results file
    atomically, and return the results. ``analyse`` is the grid's, run on the trained network; ``cwd``
    is the submitting notebook's folder, against which relative data paths resolve."""
    from ..io import write_json
    from ..train import CHECKPOINT_NAME, train_model
    from .experiments import _load  # the grid's own data loading (imported here: experiments imports this module)

    os.chdir(cwd)
    config = TrainConfig(**config).validate()
    folder = Path(checkpoint_folder)
    resume = (folder / CHECKPOINT_NAME).is_file()
    data = _load(config)
    model, result = train_model(config, checkpoint_dir=folder, resume=resume, data=data)
    if analyse is not None:
        result["analysis"] = analyse(model.eval(), data, config)
    result["command"], result["variant"] = command, variant
    if resume:  # how this run's epochs came about
        result["resumed_from_checkpoint"] = True
    write_json(Path(result_path), result)
    return result


def submit_runs(pending: list[tuple[str, TrainConfig, Path, str]], out_dir: Path, description: dict, analyse=None,
                log=print) -> list[dict]:
    """Submit ``(variant, config, results path, command)`` runs as one job each, wait, and return their
    results in order. A failed job raises with its log's place."""
    made = executor(Path(out_dir) / WORK_FOLDER / "logs", description)
    with made.batch():  # one array job on SLURM
        jobs = [made.submit(train_run, *arguments) for arguments in train_run_arguments(pending, out_dir, analyse)]
    log(f"submitted {len(jobs)} runs to {description['cluster']} (logs: {Path(out_dir) / WORK_FOLDER / 'logs'}); waiting")
    return collect_results(pending, jobs, log, where=lambda job: f" (job {job.job_id})")


def train_run_arguments(pending: list[tuple[str, TrainConfig, Path, str]], out_dir: Path, analyse=None) -> list[tuple]:
    """The arguments of ``train_run`` for each pending run. Paths are absolute, because a job may start
    in another folder (a cluster node, a worker process)."""
    cwd = os.getcwd()
    return [(config.to_dict(), variant, str(Path(path).resolve()),
             str(checkpoint_dir(out_dir, variant, config.seed).resolve()), command, cwd, analyse)
            for variant, config, path, command in pending]


def collect_results(pending: list[tuple[str, TrainConfig, Path, str]], handles: list, log=print,
                    where=lambda handle: "") -> list[dict]:
    """Wait for each run's handle (a submitit job, a future) in submission order, log its outcome, and
    return the results; a failed run raises here."""
    results = []
    for (variant, config, _, _), handle in zip(pending, handles):
        result = handle.result()
        log(f"{variant} seed {config.seed}: final test accuracy {result['final_test_acc']:.2f}%{where(handle)}")
        results.append(result)
    return results
