"""Run notebooks at named scales (presets), and find the results the book shows.

    python -m sidlib.book run notebooks/02_sid_vs_bp.ipynb --preset cpu
    python -m sidlib.book presets notebooks/02_sid_vs_bp.ipynb
    python -m sidlib.book refresh notebooks/*.ipynb        # re-execute committed notebooks in place
    python -m sidlib.book spread notebooks/03_sid_monotonic_descent.ipynb --seeds 0 1 2 --label native
    python -m sidlib.book run notebooks/02_sid_vs_bp.ipynb --preset paper --cluster slurm --cluster-option timeout_min=720

Presets live in ``notebooks/presets.yml``: for each notebook, named parameter overrides.
``smoke`` is always the notebook's own defaults (its ``parameters`` cell). ``run`` executes the
notebook through papermill's Python API with the preset's parameters and writes the executed
notebook beside the raw results, in ``results/<notebook>/<preset>/``. The experiment notebooks
show the largest preset whose results are complete (``summary.json`` present), and say which.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import signal
import sys
import tempfile
from pathlib import Path

import yaml

from .cluster import CLUSTERS, ENVIRONMENT, describe
from .workers import ENVIRONMENT as WORKERS_ENVIRONMENT, environment

PRESET_ORDER = ("smoke", "cpu", "converged", "paper")  # from smallest to largest
COMPLETE_MARKER = "summary.json"
KERNEL = "python3"


class BookError(Exception):
    """Bad input to the runner; the message names the problem and the fix."""


def presets_file(notebook: Path) -> Path:
    return Path(notebook).resolve().parent / "presets.yml"


def presets_for(notebook: Path) -> dict[str, dict]:
    """All presets of one notebook, ``smoke`` (no overrides) first."""
    path = presets_file(notebook)
    table = yaml.safe_load(path.read_text()) if path.is_file() else {}
    mine = (table or {}).get(Path(notebook).stem) or {}
    return {"smoke": {}, **{name: dict(values or {}) for name, values in mine.items() if name != "smoke"}}


def parameters_cell(notebook: Path | dict) -> ast.Module:
    """The parsed ``parameters`` cell of a notebook (a path, or the notebook as read); papermill needs
    exactly one."""
    nb = notebook if isinstance(notebook, dict) else json.loads(Path(notebook).read_text(encoding="utf-8"))
    cells = [c for c in nb["cells"] if c["cell_type"] == "code" and "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        name = Path(notebook).name if not isinstance(notebook, dict) else "the notebook"
        raise BookError(f"{name} has {len(cells)} cells tagged 'parameters'; papermill needs exactly one")
    return ast.parse("".join(cells[0]["source"]))


def declared_parameters(notebook: Path) -> set[str]:
    """Names assigned at top level in the notebook's cell tagged ``parameters``."""
    names = set()
    for node in parameters_cell(notebook).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


# Parameters that say where and how a run is kept, not what it trains: a preset may leave them to the defaults.
PLACE_PARAMETERS = ("preset", "results_root", "data_root", "reuse_runs", "device")


def parameter_defaults(notebook: Path | dict) -> dict:
    """The values assigned in the notebook's ``parameters`` cell (a path, or the notebook as read),
    each as a Python literal, or as its source text where it is not one."""
    values = {}
    for node in parameters_cell(notebook).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                values[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                values[node.targets[0].id] = ast.unparse(node.value)
    return values


def preset_changes(notebook: Path, preset: str) -> dict[str, tuple]:
    """What running ``preset`` now would train differently from the run committed in
    ``results/<notebook>/<preset>/``: {parameter: (committed value, value now)}. The committed value is
    the executed notebook's default overlaid by what papermill injected; the value now, the
    notebook's default overlaid by ``notebooks/presets.yml``; parameters the notebook did not have
    then are left out. A preset that relies on a default the
    notebook has since changed (e.g. a smaller smoke scale) would otherwise read its old runs back
    under new settings, or retrain them."""
    notebook = Path(notebook).resolve()
    executed = notebook.parent.parent / "results" / notebook.stem / preset / notebook.name
    ran = json.loads(executed.read_text(encoding="utf-8"))
    then = {**parameter_defaults(ran), **ran["metadata"].get("papermill", {}).get("parameters", {})}
    now = {**parameter_defaults(notebook), **presets_for(notebook)[preset]}
    # yaml and Python literals differ in kind only (tuples, 1e-3 as a string): compare them as JSON does
    same = lambda a, b: json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # noqa: E731
    # a parameter added since the run took a default that keeps the old behaviour; it is not compared
    return {name: (then[name], now[name]) for name in sorted(set(then) & set(now))
            if name not in PLACE_PARAMETERS and not same(then[name], now[name])}


def results_dir(stem: str, preset: str, results_root: Path) -> Path:
    return Path(results_root) / stem / preset


def largest_complete_preset(stem: str, results_root: Path) -> tuple[str, Path] | tuple[None, None]:
    """The largest preset of ``stem`` whose results are complete, and its folder: it has a summary,
    or (a notebook that trains nothing, e.g. memory counts) its executed notebook, which ``run``
    writes only once every cell has run."""
    for preset in reversed(PRESET_ORDER):
        folder = results_dir(stem, preset, results_root)
        if (folder / COMPLETE_MARKER).is_file() or (folder / f"{stem}.ipynb").is_file():
            return preset, folder
    return None, None


def cluster_options(pairs: list[str]) -> dict:
    """``["timeout_min=60", "slurm_partition=gpu"]`` -> ``{"timeout_min": 60, "slurm_partition": "gpu"}``."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise BookError(f"--cluster-option {pair!r} is not KEY=VALUE; e.g. --cluster-option timeout_min=720")
        options[key] = yaml.safe_load(value)
    return options


def run(notebook: Path, preset: str, results_root: Path | None = None, log=print, cluster: dict | None = None,
        workers: int = 1) -> Path:
    """Execute ``notebook`` at ``preset``; return the executed notebook's path (written atomically).
    ``cluster`` (``{"cluster": "slurm" | "local", <submitit option>: value}``) makes the notebook's grid
    submit its pending runs as jobs (``sidlib.book.cluster``); ``workers`` > 1 trains them on that many
    local processes (``sidlib.book.workers``)."""
    if workers < 1:
        raise BookError(f"--workers must be at least 1, got {workers}")
    if workers > 1 and cluster is not None:
        raise BookError("--workers and --cluster both say where runs train; give one of them")
    notebook = Path(notebook).resolve()
    if not notebook.is_file() or notebook.suffix != ".ipynb":
        raise BookError(f"no notebook at {notebook}; give the path of an .ipynb file under notebooks/")
    presets = presets_for(notebook)
    if preset not in presets:
        raise BookError(f"notebook {notebook.stem} has no preset {preset!r}; choose one of: {', '.join(presets)}")
    results_root = Path(results_root) if results_root else notebook.parent.parent / "results"
    out_dir = results_dir(notebook.stem, preset, results_root)
    out_dir.mkdir(parents=True, exist_ok=True)
    declared = declared_parameters(notebook)
    unknown = set(presets[preset]) - declared
    if unknown:
        raise BookError(f"preset {preset!r} sets {sorted(unknown)}, which {notebook.name} does not declare in its "
                        f"parameters cell; fix notebooks/presets.yml")
    parameters = dict(presets[preset])
    if "preset" in declared:  # experiment notebooks file their results under the preset's name
        parameters.update(preset=preset, results_root=os.path.relpath(results_root, notebook.parent))
    target = out_dir / notebook.name
    log(f"running {notebook.name} at preset {preset!r} with {parameters}")
    # The notebook's kernel inherits the environment; run_grid reads it (one set in the shell is overridden).
    asked = {WORKERS_ENVIRONMENT: str(workers), ENVIRONMENT: ""}
    if cluster is not None:
        asked[ENVIRONMENT] = describe(cluster["cluster"], {k: v for k, v in cluster.items() if k != "cluster"})
    with environment(asked):
        execute(notebook, parameters, target)
    log(f"executed notebook: {target}")
    return target


def execute(notebook: Path, parameters: dict, target: Path) -> None:
    """Run ``notebook`` with papermill (``parameters`` injected) into ``target``, written atomically.

    The cell papermill injects is folded in the book (``hide-cell``): the page says its scale in prose.
    """
    import nbformat
    import papermill

    fd, partial = tempfile.mkstemp(prefix=f".{notebook.stem}.", suffix=".ipynb", dir=target.parent)
    os.close(fd)
    try:
        papermill.execute_notebook(str(notebook), partial, parameters=parameters, cwd=str(notebook.parent),
                                   kernel_name=KERNEL, progress_bar=False)
        nb = nbformat.read(partial, as_version=4)
        for cell in nb.cells:
            tags = cell.metadata.setdefault("tags", [])
            if "injected-parameters" in tags and "hide-cell" not in tags:
                tags.append("hide-cell")
        nbformat.write(nb, partial)
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def isolated_results_root(notebook: Path, root: Path) -> Path:
    """A results folder for one execution at the defaults: the committed results of the notebook's
    larger presets are linked in (the book reads them back), its smoke results start empty.

    Without it, a spread run would overwrite the committed smoke results and, with ``reuse_runs``
    or a "shown" table, read runs of an earlier seed or machine back as its own."""
    committed = Path(notebook).resolve().parent.parent / "results" / Path(notebook).stem
    mine = Path(root) / Path(notebook).stem
    mine.mkdir(parents=True)
    for preset in sorted(committed.iterdir()) if committed.is_dir() else []:  # every committed preset but smoke
        if preset.is_dir() and preset.name != "smoke":
            (mine / preset.name).symlink_to(preset, target_is_directory=True)
    return Path(root)


def measure_spread(notebook: Path, seeds: list[int], label: str, out: Path, log=print) -> dict:
    """Execute ``notebook`` at its defaults once per seed; add every recorded number to ``out``.

    ``out`` (JSON) collects runs from several invocations, one ``label`` each (this machine,
    another CPU profile, another torch), so that ``notebooks/tolerances.yml`` can cite the spread
    between seeds and between machines. A label's earlier runs are replaced.
    """
    import platform

    import torch

    from ..io import write_json
    from .notebook import notebook_records
    from ..train import cpu_model

    notebook = Path(notebook).resolve()
    declared = declared_parameters(notebook)
    seed_name = "seed" if "seed" in declared else "seeds" if "seeds" in declared else None
    if seed_name is None:
        raise BookError(f"{notebook.name} declares neither 'seed' nor 'seeds' in its parameters cell; "
                        f"measure the spread of a notebook that trains something")
    out = Path(out)
    table = json.loads(out.read_text()) if out.is_file() else {"notebook": notebook.stem, "runs": []}
    runs = [r for r in table["runs"] if r["label"] != label]
    environment = {"torch": torch.__version__, "python": platform.python_version(), "processor": cpu_model(),
                   "ATEN_CPU_CAPABILITY": os.environ.get("ATEN_CPU_CAPABILITY", "default (best)"),
                   "ONEDNN_MAX_CPU_ISA": os.environ.get("ONEDNN_MAX_CPU_ISA", "default (best)")}
    with tempfile.TemporaryDirectory() as scratch:
        for seed in seeds:
            target = Path(scratch) / f"{notebook.stem}-{seed}.ipynb"
            parameters = {seed_name: seed if seed_name == "seed" else [seed]}
            if "results_root" in declared:  # each seed's smoke runs go to a fresh folder of their own
                parameters["results_root"] = str(isolated_results_root(notebook, Path(scratch) / f"results-{seed}"))
            log(f"{label}: executing {notebook.name} with {seed_name} = {seed}")
            execute(notebook, parameters, target)
            runs.append({"label": label, "seed": seed, "environment": environment, "records": notebook_records(target)})
    table["runs"] = runs
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, table)
    return table


def spread_summary(table: dict, reference_label: str = "native", reference_seed: int = 0) -> dict[str, dict]:
    """Per recorded name: the largest gap to the reference run between seeds and between machines."""
    runs = table["runs"]
    reference = next((r for r in runs if r["label"] == reference_label and r["seed"] == reference_seed), None)
    if reference is None:
        raise BookError(f"no run labelled {reference_label!r} with seed {reference_seed} in the spread table")

    def records(run):  # a name may carry its run's seed ("sid_seed1_final_acc"): align it with the reference's
        return {name.replace(f"seed{run['seed']}", f"seed{reference_seed}"): v for name, v in run["records"].items()}

    summary = {}
    for name, value in reference["records"].items():
        seeds = [abs(records(r)[name] - value) for r in runs if r["label"] == reference_label and name in records(r)]
        machines = [abs(r["records"][name] - value) for r in runs
                    if r["seed"] == reference_seed and r["label"] != reference_label and name in r["records"]]
        summary[name] = {"seed_spread": max(seeds), "machine_spread": max(machines, default=float("nan")),
                         "machines": sorted({r["label"] for r in runs if r["seed"] == reference_seed})}
    return summary


def refresh(notebook: Path, timeout: int = 3600) -> None:
    """Re-execute a committed notebook in place, top to bottom in a fresh kernel, at its defaults."""
    import nbformat
    from nbclient import NotebookClient

    notebook = Path(notebook).resolve()
    nb = nbformat.read(notebook, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name=KERNEL, resources={"metadata": {"path": str(notebook.parent)}}).execute()
    fd, partial = tempfile.mkstemp(prefix=f".{notebook.stem}.", suffix=".ipynb", dir=notebook.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        nbformat.write(nb, f)
    os.replace(partial, notebook)


def stop_on_sigterm() -> None:
    """Make SIGTERM (``kill``) stop this process as an exception would. Papermill then shuts the
    notebook's kernel down, with its process group (the grid's worker processes are in it), and
    ``execute`` removes its partial notebook; killed outright, the kernel would go on training."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def main(argv=None) -> int:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(prog="python -m sidlib.book", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    r = commands.add_parser("run", help="execute a notebook at a preset into results/<notebook>/<preset>/")
    r.add_argument("notebook", type=Path)
    r.add_argument("--preset", default="smoke")
    r.add_argument("--results-root", type=Path, default=None, help="default: results/ beside notebooks/")
    r.add_argument("--cluster", choices=CLUSTERS, default=None,
                   help="submit the grid's pending runs as jobs through submitit (slurm; local: local processes) "
                        "and wait for them; finished runs are read back, interrupted ones resume from their checkpoints")
    r.add_argument("--cluster-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a submitit executor parameter, e.g. slurm_partition=gpu, gpus_per_node=1, timeout_min=720")
    r.add_argument("--workers", type=int, default=1,
                   help="train the grid's pending runs on N local processes, each with its share of the cores; "
                        "finished runs are read back, interrupted ones resume from their checkpoints")
    t = commands.add_parser("throughput", help="runs per hour of a small grid in one process and on N worker processes")
    t.add_argument("--dataset", default="mnist1d")
    t.add_argument("--depth", type=int, default=10)
    t.add_argument("--epochs", type=int, default=12)
    t.add_argument("--methods", nargs="+", default=["sid", "bp"])
    t.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    t.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    t.add_argument("--out", type=Path, default=None, help="JSON of the measurement, written atomically")
    p = commands.add_parser("presets", help="list a notebook's presets")
    p.add_argument("notebook", type=Path)
    f = commands.add_parser("refresh", help="re-execute notebooks in place at their defaults")
    f.add_argument("notebooks", type=Path, nargs="+")
    s = commands.add_parser("spread", help="measure how recorded numbers vary with the seed and the machine")
    s.add_argument("notebook", type=Path)
    s.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    s.add_argument("--label", default="native", help="names this machine or profile (native, avx2, torch-2.4, ...)")
    s.add_argument("--out", type=Path, default=None, help="default: results/spread/<notebook>.json")
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            if args.cluster_option and args.cluster is None:
                raise BookError("--cluster-option needs --cluster (slurm or local)")
            cluster = None if args.cluster is None else {"cluster": args.cluster, **cluster_options(args.cluster_option)}
            run(args.notebook, args.preset, args.results_root, cluster=cluster, workers=args.workers)
        elif args.command == "spread":
            out = args.out or args.notebook.resolve().parent.parent / "results" / "spread" / f"{args.notebook.stem}.json"
            table = measure_spread(args.notebook, args.seeds, args.label, out)
            if any(r["label"] == "native" and r["seed"] == 0 for r in table["runs"]):
                for name, row in spread_summary(table).items():
                    print(f"{name}: seeds {row['seed_spread']:.4g}, machines {row['machine_spread']:.4g}")
            print(f"spread: {out}")
        elif args.command == "throughput":
            from ..config import ConfigError, TrainConfig
            from ..io import write_json
            from .workers import throughput

            if min(args.workers) < 1:
                raise BookError(f"--workers must be at least 1, got {min(args.workers)}")
            try:
                base = TrainConfig(dataset=args.dataset, depth=args.depth, epochs=args.epochs, val_split=500,
                                   label_smoothing=0.1, device="cpu").validate()
            except ConfigError as error:
                raise BookError(str(error)) from None
            table = throughput(base, args.methods, args.seeds, args.workers)
            table["command"] = "python -m sidlib.book throughput " + " ".join(sys.argv[2:] if argv is None else argv[1:])
            if args.out:
                write_json(args.out, table)
        elif args.command == "presets":
            for name, values in presets_for(args.notebook).items():
                print(f"{name}: {values or '(the notebook defaults)'}")
        else:
            for notebook in args.notebooks:
                print(f"refreshing {notebook}", flush=True)
                refresh(notebook)
    except BookError as error:
        print(f"sidlib.book: error: {error}", file=sys.stderr)
        return 2
    return 0

