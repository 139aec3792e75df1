"""A grid's runs on several local worker processes, each with its share of the CPU's threads.

    python -m sidlib.book run notebooks/02_sid_vs_bp.ipynb --preset converged --workers 2

Small networks (MNIST-1D, MLPs) leave most of a multi-core CPU idle within one run: their kernels are
too short to split well across threads. Independent runs on separate processes use the cores
instead. The runner puts the worker count in the notebook kernel's environment (``SIDBOOK_WORKERS``);
``experiments.run_grid`` hands its pending runs to :func:`run_pending`, which trains each as the
cluster's jobs do (``sidlib.book.cluster.train_run``: a checkpoint after every epoch, resumed when
found, the results file written atomically), so an interrupted grid continues where each run
stopped. A worker uses ``cores // workers`` threads; each run's JSON records its thread count, and
seeded runs are bitwise reproducible for a given thread count.
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ENVIRONMENT = "SIDBOOK_WORKERS"


def requested() -> int:
    """The number of worker processes the runner asked for (1: train in the notebook's own process)."""
    text = os.environ.get(ENVIRONMENT, "")
    return int(text) if text.strip() else 1


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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
    import cloudpickle

    from . import cluster

    threads = max(1, available_cores() // workers)
    log(f"{len(pending)} runs on {workers} worker processes, {threads} thread(s) each")
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no thread pool inherited across fork
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(threads,)) as pool:
        futures = []
        for variant, config, path, command in pending:
            folder = cluster.checkpoint_dir(out_dir, variant, config.seed).resolve()
            args = (config.to_dict(), variant, str(Path(path).resolve()), str(folder), command, os.getcwd(), analyse)
            futures.append(pool.submit(_call, cloudpickle.dumps((cluster.train_run, args))))
        results = []
        for (variant, config, _, _), future in zip(pending, futures):
            result = future.result()
            log(f"{variant} seed {config.seed}: final test accuracy {result['final_test_acc']:.2f}%")
            results.append(result)
    return results
