"""What an experiment page prints about its runs: their scale and provenance, and our numbers beside the paper's."""
from __future__ import annotations

import statistics

from ..config import TrainConfig
from .experiments import summarise, variant_of


def _by_variant(runs: list[dict], key) -> dict:
    """``key(run)`` -> the variants whose runs have it, in the order first seen."""
    groups: dict = {}
    for r in runs:
        groups.setdefault(key(r), [])
        if variant_of(r) not in groups[key(r)]:
            groups[key(r)].append(variant_of(r))
    return groups


def _hardware(env: dict) -> str:
    return f"{env['device']} ({env['processor']}, {env['threads']} threads), torch {env['torch']}"


def provenance(preset: str, runs: list[dict]) -> str:
    """Scale, seeds, hardware and the commands (seed as S) of a preset's runs, as lines of text.
    Where the runs differ in training images or hardware, each group's variants are named, and so are
    the variants whose runs were copied from another page's results (``experiments.run_grid``)."""
    c = {**TrainConfig().to_dict(), **runs[0]["config"]}  # a run older than an option was made with its default
    seeds = sorted({r["config"]["seed"] for r in runs})
    datasets = sorted({r["config"]["dataset"] for r in runs})
    subsets = _by_variant(runs, lambda r: r["config"]["train_subset"] or "all")
    images = "; ".join(f"{n} training images" + (f" ({', '.join(v)})" if len(subsets) > 1 else "")
                       for n, v in subsets.items())
    hardware = _by_variant(runs, lambda r: _hardware(r["environment"]))
    lines = [f"showing preset {preset!r}: {', '.join(datasets)}, {images}, "
             f"{c['test_subset'] or 'all'} test images, {c['epochs']} epochs, seeds {seeds}, batch {c['batch_size']}, "
             f"{c['optimizer']} lr {c['lr']}, {c['schedule']} schedule, {c['precision']}"]
    lines += [f"hardware: {h}" + (f" ({', '.join(v)})" if len(hardware) > 1 else "") for h, v in hardware.items()]
    copied = _by_variant([r for r in runs if "copied_from" in r], lambda r: r["copied_from"].rsplit("/", 1)[0])
    lines += [f"copied from {folder}/, the same commands: {', '.join(v)}" for folder, v in copied.items()]
    commands = sorted({r["command"].replace(f"--seed {r['config']['seed']}", "--seed S") for r in runs})
    return "\n".join(lines + ["commands:"] + [f"  {command}" for command in commands])


def _early_stopped(runs: list[dict]) -> bool:
    """Whether every run stopped on a validation split (a patience), so that its best-validation epoch is the result."""
    return all(r["config"].get("val_split") and r["config"].get("patience") for r in runs)


def accuracy_rows(runs: list[dict], references: list[dict], label=lambda row: row["variant"]) -> list[dict]:
    """One row per variant of ``runs`` (ours: final and best-epoch accuracy, mean ± std over seeds),
    then the paper's rows in ``references`` (sidlib.book.reference)."""
    rows = []
    mixed_subsets = len({r["config"]["train_subset"] for r in runs}) > 1
    # early-stopped runs lead with what early stopping keeps: the best-validation epoch's test accuracy
    validated = bool(runs) and _early_stopped(runs)
    for row in summarise(runs):
        mine = [r for r in runs if variant_of(r) == row["variant"]]
        c = mine[0]["config"]
        images = f", {c['train_subset'] or 'all'} training images" if mixed_subsets else ""
        budget = f"patience {c['patience']}, ≤ {c['epochs']} epochs" if c.get("patience") else f"{c['epochs']} epochs"
        rows.append({"method": f"{label(row)} (ours)", "dataset": c["dataset"], "model": c["model"],
                     "protocol": f"{budget}, {len(row['seeds'])} seeds{images}"})
        if validated:
            rows[-1] |= {"test acc. at best val. epoch (%)": f"{row['selected_acc_mean']:.2f} ± {row['selected_acc_std']:.2f}",
                         "best val. epoch (median)": f"{statistics.median(row['selected_epochs']):g}"}
        rows[-1] |= {"final test acc. (%)": f"{row['final_acc_mean']:.2f} ± {row['final_acc_std']:.2f}",
                     "best epoch (%)": "–" if row["best_acc_mean"] is None else f"{row['best_acc_mean']:.2f}"}
    for ref in references:
        std = f" ± {ref['std']:.2f}" if ref.get("std") is not None else ""
        rows.append({"method": f"{ref['method'].upper()} ({ref['source']})", "dataset": ref["dataset"],
                     "model": ref["model"], "protocol": ref["protocol"],
                     **({"test acc. at best val. epoch (%)": "", "best val. epoch (median)": ""} if validated else {}),
                     "final test acc. (%)": f"{ref['acc']:.2f}{std}", "best epoch (%)": ""})
    return rows


def bench_ratios(bench_records: list[dict], baseline: str = "bp") -> dict[str, dict[str, float]]:
    """Each method's time per step (``time``) and peak saved-tensor bytes (``saved``) as multiples of
    ``baseline``'s, from one ``sidlib bench`` run (its methods were interleaved, so the ratios are fair)."""
    by_method = {r["method"]: r for r in bench_records}
    base = by_method[baseline]
    return {method: {"time": r["step_seconds"] / base["step_seconds"],
                     "saved": r["peak_saved_bytes"] / base["peak_saved_bytes"]} for method, r in by_method.items()}


def record_shown(runs: list[dict], ratios: dict[str, dict[str, float]] | None = None, prefix: str = "shown") -> None:
    """Record the shown preset's numbers, so that the page's prose cites them (``{glue:text}`shown_sid_acc:.2f```)
    instead of retyping them: per variant ``shown_<variant>_acc`` and ``_acc_std`` (final test accuracy, mean
    and std over seeds), and where the runs stopped early on a validation split ``_selected_acc`` and
    ``_selected_acc_std`` (the best-validation epoch's); per benchmarked method ``shown_<method>_time`` and ``_saved``
    (:func:`bench_ratios`). A second preset on the same page records under its own ``prefix``."""
    from .notebook import record

    for row in summarise(runs):
        record(f"{prefix}_{row['variant']}_acc", row["final_acc_mean"])
        record(f"{prefix}_{row['variant']}_acc_std", row["final_acc_std"])
        if _early_stopped([r for r in runs if variant_of(r) == row["variant"]]):
            record(f"{prefix}_{row['variant']}_selected_acc", row["selected_acc_mean"])
            record(f"{prefix}_{row['variant']}_selected_acc_std", row["selected_acc_std"])
    for method, ratio in (ratios or {}).items():
        record(f"{prefix}_{method}_time", ratio["time"])
        record(f"{prefix}_{method}_saved", ratio["saved"])
