"""What an experiment page prints about its runs: their scale and provenance, and our numbers beside the paper's."""
from __future__ import annotations

from .experiments import summarise


def provenance(preset: str, runs: list[dict]) -> str:
    """Scale, seeds, hardware and the commands (seed as S) of a preset's runs, as lines of text."""
    c, env = runs[0]["config"], runs[0]["environment"]
    seeds = sorted({r["config"]["seed"] for r in runs})
    datasets = sorted({r["config"]["dataset"] for r in runs})
    lines = [f"showing preset {preset!r}: {', '.join(datasets)}, {c['train_subset'] or 'all'} training images, "
             f"{c['test_subset'] or 'all'} test images, {c['epochs']} epochs, seeds {seeds}, batch {c['batch_size']}, "
             f"{c['optimizer']} lr {c['lr']}, {c['schedule']} schedule, {c['precision']}",
             f"hardware: {env['device']} ({env['processor']}, {env['threads']} threads), torch {env['torch']}",
             "commands:"]
    commands = sorted({r["command"].replace(f"--seed {r['config']['seed']}", "--seed S") for r in runs})
    return "\n".join(lines + [f"  {command}" for command in commands])


def accuracy_rows(runs: list[dict], references: list[dict], label=lambda row: row["variant"]) -> list[dict]:
    """One row per variant of ``runs`` (ours: final and best-epoch accuracy, mean ± std over seeds),
    then the paper's rows in ``references`` (sidlib.book.reference)."""
    rows = []
    for row in summarise(runs):
        mine = [r for r in runs if r.get("variant", r["config"]["method"]) == row["variant"]]
        c = mine[0]["config"]
        rows.append({"method": f"{label(row)} (ours)", "dataset": c["dataset"], "model": c["model"],
                     "protocol": f"{c['epochs']} epochs, {len(row['seeds'])} seeds",
                     "final test acc. (%)": f"{row['final_acc_mean']:.2f} ± {row['final_acc_std']:.2f}",
                     "best epoch (%)": f"{row['best_acc_mean']:.2f}"})
    for ref in references:
        std = f" ± {ref['std']:.2f}" if ref.get("std") is not None else ""
        rows.append({"method": f"{ref['method'].upper()} ({ref['source']})", "dataset": ref["dataset"],
                     "model": ref["model"], "protocol": ref["protocol"], "final test acc. (%)": f"{ref['acc']:.2f}{std}",
                     "best epoch (%)": ""})
    return rows
