"""Experiment grids (methods x seeds) with one results file per run, and their summaries.

Each run's results are the training loop's (``sidlib.train.train``) plus the CLI command that
reproduces it and the name of its variant, written atomically to ``<out_dir>/<variant>-seed<seed>.json``.
A variant is a named set of changes to the base configuration; a list of methods is the common case
(each method its own variant).
"""
from __future__ import annotations

import json
import statistics
from dataclasses import fields, replace
from pathlib import Path

from .. import data as datasets
from . import cluster, workers
from ..config import TrainConfig
from ..io import write_json
from ..train import best_validation_epoch, train, train_model


def cli_command(config: TrainConfig) -> str:
    """The ``python -m sidlib train`` command line that runs ``config`` (the data root, which is
    where files live rather than what is run, is left out)."""
    defaults = TrainConfig()
    parts = ["python -m sidlib train"]
    for f in fields(TrainConfig):
        value = getattr(config, f.name)
        if f.name == "data_root":
            continue
        if f.name in ("method", "dataset", "depth", "epochs", "seed") or value != getattr(defaults, f.name):
            if value is True:  # a switch (store_true) takes no value
                parts.append(f"--{f.name.replace('_', '-')}")
            elif value is not None:
                parts.append(f"--{f.name.replace('_', '-')} {value}")
    return " ".join(parts + ["--no-progress"])


def run_path(out_dir: Path, variant: str, seed: int) -> Path:
    return Path(out_dir) / f"{variant}-seed{seed}.json"


def as_variants(variants) -> dict[str, dict]:
    """``["sid", "bp"]`` -> ``{"sid": {"method": "sid"}, "bp": {"method": "bp"}}``; a dict is kept."""
    return dict(variants) if isinstance(variants, dict) else {m: {"method": m} for m in variants}


def run_grid(base: TrainConfig, variants, seeds, out_dir: Path, reuse: bool = False, log=print,
             analyse=None) -> list[dict]:
    """Train every variant (method names, or ``{name: {option: value}}``) with every seed. With
    ``reuse``, runs whose results file exists are read back instead of retrained (so an interrupted
    long grid continues where it stopped).

    ``analyse(model, data, config)``, if given, is called on each freshly trained network (in eval
    mode) and its JSON-ready answer is kept in the run's file under ``"analysis"``, so that an
    analysis of the trained network is read back with the run instead of needing the network (a
    kept run without one is retrained).

    When the runner was given ``--cluster`` (``sidlib.book.cluster``), the runs without a results file
    are submitted as jobs instead, and finished runs are always read back.

    With ``reuse``, a run that another page's converged preset has already made (the same command and
    configuration, :func:`converged_twins`) is copied from there, marked ``copied_from``, rather than
    trained again: it would come out bitwise the same on this machine."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    variants = as_variants(variants)
    configs = {name: replace(base, **changes).validate() for name, changes in variants.items()}
    on_cluster = cluster.requested()  # the runner's --cluster: pending runs become jobs (sidlib.book.cluster)
    pool = workers.requested() if on_cluster is None else 1  # the runner's --workers: local processes
    deferred = on_cluster is not None or pool > 1  # pending runs are trained elsewhere, then read back
    reuse = reuse or deferred  # such a grid always continues where it stopped
    if not reuse:
        clear_stale_runs(out_dir)
    shared_data = {}
    results, pending = [], []
    twins = converged_twins(out_dir) if reuse and analyse is None else {}
    for name, variant_config in configs.items():
        for seed in seeds:
            path = run_path(out_dir, name, seed)
            if reuse and path.exists() and (analyse is None or "analysis" in json.loads(path.read_text())):
                result = json.loads(path.read_text())
                results.append(result)
                log(f"{name} seed {seed}: final test accuracy {result['final_test_acc']:.2f}% "
                    f"(read back from {path.name})")
                continue
            config = replace(variant_config, seed=seed)
            twin = twins.get(cli_command(config))
            twin_run = json.loads(twin.read_text()) if twin is not None else None
            if twin_run is not None and _same_run(twin_run["config"], config):
                source = twin.relative_to(out_dir.resolve().parent.parent).as_posix()
                result = {**twin_run, "variant": name, "copied_from": source}
                write_json(path, result)
                results.append(result)
                log(f"{name} seed {seed}: final test accuracy {result['final_test_acc']:.2f}% (copied from {source})")
                continue
            if deferred:
                pending.append((name, config, path, cli_command(config)))
                results.append((name, seed))  # filled in below, in the grid's order
                continue
            data = None
            if config.label_noise == 0:  # then the data do not depend on the seed: load each dataset once
                key = (config.dataset, config.train_subset, config.test_subset, config.val_split)
                if key not in shared_data:
                    shared_data[key] = _load(config)
                data = shared_data[key]
            if analyse is None:
                result = train(config, data=data)
            else:
                data = data if data is not None else _load(config)
                model, result = train_model(config, data=data)
                result["analysis"] = analyse(model.eval(), data, config)
            result["command"] = cli_command(config)
            result["variant"] = name
            write_json(path, result)
            results.append(result)
            log(f"{name} seed {seed}: final test accuracy {result['final_test_acc']:.2f}%")
    if pending:
        done = (cluster.submit_runs(pending, out_dir, on_cluster, analyse=analyse, log=log) if on_cluster is not None
                else workers.run_pending(pending, out_dir, pool, analyse=analyse, log=log))
        finished = {(r["variant"], r["config"]["seed"]): r for r in done}
        results = [finished[r] if isinstance(r, tuple) else r for r in results]
    return results


# Folders whose earlier runs this process has already cleared: a notebook may run several grids into one
# folder (e.g. the runs that choose a regulariser, then the comparison), and only the first clears it.
_CLEARED: set[Path] = set()


def clear_stale_runs(out_dir: Path) -> None:
    """Remove the run files an earlier execution left in ``out_dir``, once per process (per notebook
    kernel). A grid that retrains everything (no ``reuse``, e.g. a smoke run) must not leave the runs
    of other defaults (other seeds, other variants) beside its own: ``load_runs`` would read them back
    as this execution's."""
    out_dir = Path(out_dir).resolve()
    if out_dir in _CLEARED:
        return
    _CLEARED.add(out_dir)
    for path in out_dir.glob("*-seed*.json"):
        path.unlink()


def converged_twins(out_dir: Path) -> dict[str, Path]:
    """The runs of the other pages' converged presets (``<results>/<page>/converged*/``, beside
    ``out_dir``'s page), by command: converged runs are the dear ones, and two pages often train the
    same configuration (SID at the defaults is notebook 02's run, notebook 20's alpha = 0.5, notebook
    22's constant learning rate of 1e-3)."""
    out_dir = Path(out_dir).resolve()
    twins = {}
    for path in sorted(out_dir.parent.parent.glob("*/converged*/*-seed*.json")):
        if path.parent != out_dir:
            twins.setdefault(json.loads(path.read_text())["command"], path)
    return twins


def _same_run(saved: dict, config: TrainConfig) -> bool:
    """Whether a run's saved configuration is ``config``'s, but for where it keeps its data: the commands
    can agree while a default has changed since the run was made. A run older than an option was
    made with its default (as a resumed checkpoint is read, ``sidlib.train.load_checkpoint``)."""
    asked, defaults = (json.loads(json.dumps(c.to_dict())) for c in (config, TrainConfig()))
    return all(saved.get(key, defaults[key]) == value for key, value in asked.items() if key != "data_root")


def _load(config: TrainConfig):
    return datasets.load(config.dataset, config.data_root, config.resolved_device(), config.train_subset,
                         config.label_noise, noise_seed=config.seed, test_subset=config.test_subset,
                         val_split=config.val_split)


def variant_of(run: dict) -> str:
    return run.get("variant", run["config"]["method"])  # runs written before variants existed: the method


def load_runs(out_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(out_dir).glob("*-seed*.json"))]


def _mean_std(values):
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def selected_epoch(run: dict) -> dict:
    """The epoch record that model selection on the validation split picks: the first epoch of
    highest validation accuracy (early stopping), never one chosen by its test accuracy."""
    if not all("val_acc" in h for h in run["history"]):
        raise ValueError(f"run {variant_of(run)!r} seed {run['config']['seed']} has no validation accuracy; "
                         "train it with --val-split N")
    return best_validation_epoch(run["history"])


def summarise(runs: list[dict]) -> list[dict]:
    """One row per variant: final test accuracy mean and std over seeds, the best epoch's test
    accuracy (what selecting on the test set would report; None where runs skipped the test set
    on epochs they do not report), and where the runs have a validation
    split, the test accuracy of the epoch chosen on validation (:func:`selected_epoch`) and the final
    validation accuracy; and the median time per epoch (the median, so that an epoch slowed by
    other work on the machine does not distort it; the raw times stay in each run's history)."""
    rows = []
    for variant in sorted({variant_of(r) for r in runs}):
        mine = [r for r in runs if variant_of(r) == variant]
        final_mean, final_std = _mean_std([r["final_test_acc"] for r in mine])
        tested_every_epoch = all(h["test_acc"] is not None for r in mine for h in r["history"])
        best_mean = (_mean_std([max(h["test_acc"] for h in r["history"]) for r in mine])[0]
                     if tested_every_epoch else None)  # test_epochs="reported": no test accuracy to select on
        epoch_seconds = [h["epoch_seconds"] for r in mine for h in r["history"]]
        rows.append({"variant": variant, "method": mine[0]["config"]["method"], "seeds": sorted(r["config"]["seed"] for r in mine),
                     "epochs": mine[0]["config"]["epochs"], "final_acc_mean": final_mean,
                     "final_acc_std": final_std, "best_acc_mean": best_mean,
                     "epoch_seconds_median": statistics.median(epoch_seconds)})
        if all("final_val_acc" in r for r in mine):
            chosen = [selected_epoch(r) for r in mine]
            val_mean, val_std = _mean_std([r["final_val_acc"] for r in mine])
            selected_mean, selected_std = _mean_std([h["test_acc"] for h in chosen])
            rows[-1] |= {"final_val_acc_mean": val_mean, "final_val_acc_std": val_std,
                         "selected_val_acc_mean": statistics.fmean(h["val_acc"] for h in chosen),
                         "selected_acc_mean": selected_mean, "selected_acc_std": selected_std,
                         "selected_epochs": [h["epoch"] for h in chosen]}
    return rows


def tuned_on_validation(rows: list[dict], variants) -> dict:
    """Hyperparameter selection on validation: of the :func:`summarise` rows of ``variants`` (one
    method's settings), the one whose selected epochs have the highest mean validation accuracy.
    Its ``selected_acc_mean`` is then the test accuracy of a method tuned without the test set."""
    candidates = [row for row in rows if row["variant"] in set(variants)]
    if not candidates or not all("selected_val_acc_mean" in row for row in candidates):
        raise ValueError(f"no validation accuracy for {sorted(variants)}; train them with --val-split N")
    return max(candidates, key=lambda row: row["selected_val_acc_mean"])


def learning_curves(runs: list[dict], key: str = "test_acc") -> dict[str, dict[str, list[float]]]:
    """Per variant: ``key`` (test accuracy, or e.g. ``train_acc``) per epoch, its mean, minimum and
    maximum over the seeds still training at that epoch (runs stopped early end at different epochs)."""
    curves = {}
    for variant in sorted({variant_of(r) for r in runs}):
        per_seed = [[h[key] for h in r["history"]] for r in runs if variant_of(r) == variant]
        if any(value is None for seq in per_seed for value in seq):
            raise ValueError(f"{variant!r} was not evaluated on {key!r} every epoch (test_epochs='reported'); "
                             "plot its 'val_acc' instead")
        by_epoch = [[seq[e] for seq in per_seed if len(seq) > e] for e in range(max(map(len, per_seed)))]
        curves[variant] = {"epoch": list(range(1, len(by_epoch) + 1)),
                          "mean": [statistics.fmean(v) for v in by_epoch],
                          "min": [min(v) for v in by_epoch], "max": [max(v) for v in by_epoch]}
    return curves
