"""A grid's runs on several local worker processes, each with its share of the CPU's threads.

    python -m sidlib.book run notebooks/02_sid_vs_bp.ipynb --preset converged --workers 2

Small networks (MNIST-1D, MLPs) leave most of a multi-core CPU idle within one run: their kernels are
too short to split well across threads. Independent runs on separate processes use the cores
instead. The runner puts the worker count in the notebook kernel's environment (``SIDBOOK_WORKERS``);
``experiments.run_grid`` hands its pending runs to :func:`run_pending`, which trains each as the
cluster's jobs do (``sidlib.book.cluster.train_run``: a checkpoint after every epoch, resumed when
found, the results file written atomically), so an interrupted grid continues where each run
stopped. A worker uses ``cores // workers`` threads; each run's JSON records its thread count, and
seeded runs are bitwise reproducible for a given thread count. Workers are spawned (fresh
interpreters), so a script that calls ``run_grid`` with workers must guard its top level with
``if __name__ == "__main__":``, as ``multiprocessing`` requires; notebooks need nothing.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ENVIRONMENT = "SIDBOOK_WORKERS"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def requested() -> int:
    """The number of worker processes the runner asked for (1: train in the notebook's own process)."""
    text = os.environ.get(ENVIRONMENT, "")
    return int(text) if text.strip() else 1


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_per_worker(workers: int) -> int:
    return max(1, available_cores() // workers)


def _start_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _call(blob: bytes):
    import cloudpickle

    function, args = cloudpickle.loads(blob)
    return function(*args)


def run_pending(pending: list, out_dir: Path, workers: int, analyse=None, log=print) -> list[dict]:
    """Train ``(variant, config, results path, command)`` runs on ``workers`` processes; return their
    results in the order given. The grid's ``analyse`` travels with each run (cloudpickle, so that a
    function defined in a notebook works)."""
    threads = threads_per_worker(workers)
    log(f"{len(pending)} runs on {workers} worker processes, {threads} thread(s) each")
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no thread pool inherited across fork
    # OpenMP and BLAS size their pools from the environment when a worker starts: give each its share,
    # so that no library in a worker starts a pool as large as the machine.
    with environment({name: str(threads) for name in THREAD_VARIABLES}):
        return _run(pending, out_dir, workers, threads, analyse, log, context)


@contextlib.contextmanager
def environment(values: dict[str, str]):
    """Set environment variables for the block (child processes inherit them), then restore each."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _run(pending, out_dir, workers, threads, analyse, log, context) -> list[dict]:
    import cloudpickle

    from . import cluster

    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(threads,)) as pool:
        futures = [pool.submit(_call, cloudpickle.dumps((cluster.train_run, arguments)))
                   for arguments in cluster.train_run_arguments(pending, out_dir, analyse)]
        return cluster.collect_results(pending, futures, log)


def throughput(base, variants, seeds, worker_counts=(1, 2), log=print) -> dict:
    """Runs per hour of one grid (``base`` x ``variants`` x ``seeds``, fresh results folders) trained in
    the notebook's process (1: all cores in one process) and on each larger number of workers,
    measured one after the other in one sitting. Each scheme runs as a notebook's grid would: in one
    process the dataset is loaded once; a worker loads it per run and checkpoints every epoch, and
    both costs count against it."""
    import tempfile
    import time

    import torch

    from ..train import cpu_model
    from .experiments import run_grid

    rows = []
    for count in worker_counts:
        with environment({ENVIRONMENT: str(count)}), tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            runs = run_grid(base, variants, seeds, Path(out), log=lambda *_: None)
            wall = time.perf_counter() - started
        threads = threads_per_worker(count) if count > 1 else torch.get_num_threads()
        rows.append({"workers": count, "threads_per_worker": threads, "runs": len(runs), "wall_seconds": wall,
                     "runs_per_hour": 3600 * len(runs) / wall})
        log(f"{count} worker(s), {threads} thread(s) each: {len(runs)} runs in {wall:.1f} s, "
            f"{rows[-1]['runs_per_hour']:.0f} runs per hour")
    return {"config": base.to_dict(), "variants": list(variants), "seeds": list(seeds), "rows": rows,
            "speedup": {row["workers"]: row["runs_per_hour"] / rows[0]["runs_per_hour"] for row in rows},
            "environment": {"processor": cpu_model(), "cores": available_cores(), "torch": torch.__version__}}
