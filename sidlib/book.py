"""Run notebooks at named scales (presets), and find the results the book shows.

    python -m sidlib.book run notebooks/02_sid_vs_bp.ipynb --preset cpu
    python -m sidlib.book presets notebooks/02_sid_vs_bp.ipynb
    python -m sidlib.book refresh notebooks/*.ipynb        # re-execute committed notebooks in place

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
import sys
import tempfile
from pathlib import Path

import yaml

PRESET_ORDER = ("smoke", "cpu", "paper")  # from smallest to largest
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


def declared_parameters(notebook: Path) -> set[str]:
    """Names assigned at top level in the notebook's cell tagged ``parameters``."""
    nb = json.loads(Path(notebook).read_text(encoding="utf-8"))
    cells = [c for c in nb["cells"] if c["cell_type"] == "code" and "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise BookError(f"{Path(notebook).name} has {len(cells)} cells tagged 'parameters'; papermill needs exactly one")
    source = "".join(cells[0]["source"])
    names = set()
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def results_dir(stem: str, preset: str, results_root: Path) -> Path:
    return Path(results_root) / stem / preset


def largest_complete_preset(stem: str, results_root: Path) -> tuple[str, Path] | tuple[None, None]:
    """The largest preset of ``stem`` whose results are complete, and its folder."""
    for preset in reversed(PRESET_ORDER):
        folder = results_dir(stem, preset, results_root)
        if (folder / COMPLETE_MARKER).is_file():
            return preset, folder
    return None, None


def run(notebook: Path, preset: str, results_root: Path | None = None, log=print) -> Path:
    """Execute ``notebook`` at ``preset``; return the executed notebook's path (written atomically)."""
    import papermill

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
    fd, partial = tempfile.mkstemp(prefix=f".{notebook.stem}.", suffix=".ipynb", dir=out_dir)
    os.close(fd)
    log(f"running {notebook.name} at preset {preset!r} with {parameters}")
    try:
        papermill.execute_notebook(str(notebook), partial, parameters=parameters, cwd=str(notebook.parent),
                                   kernel_name=KERNEL, progress_bar=False)
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    log(f"executed notebook: {target}")
    return target


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sidlib.book", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    r = commands.add_parser("run", help="execute a notebook at a preset into results/<notebook>/<preset>/")
    r.add_argument("notebook", type=Path)
    r.add_argument("--preset", default="smoke")
    r.add_argument("--results-root", type=Path, default=None, help="default: results/ beside notebooks/")
    p = commands.add_parser("presets", help="list a notebook's presets")
    p.add_argument("notebook", type=Path)
    f = commands.add_parser("refresh", help="re-execute notebooks in place at their defaults")
    f.add_argument("notebooks", type=Path, nargs="+")
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            run(args.notebook, args.preset, args.results_root)
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


if __name__ == "__main__":
    sys.exit(main())
