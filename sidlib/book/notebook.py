"""What a notebook shows, split by how a test may check it on another machine.

Two kinds of output (README, "What `make test` proves, on any machine"):

* **Deterministic**: closed forms, exact counts, checks on constructed inputs. nbval compares
  their text exactly, so they are printed with :func:`fixed` (no negative zero, no digits below
  the computation's accuracy) or as bounds (``notebooks/sanitize.cfg`` maps rounding-level
  numbers such as ``3.1e-08`` to ``<1e-06``).
* **Measured**: anything that comes out of a trained network. Different CPUs, kernels and torch
  versions round differently and training amplifies it, so these are never compared as text.
  A notebook :func:`record` s each such number (myst-nb's ``glue`` format, so the book's prose can
  cite it as ``{glue:text}`name:.2f```) in a cell marked ``# NBVAL_IGNORE_OUTPUT``; the test suite
  (``conftest.py``) compares every recorded value with the committed one within the tolerance
  that ``notebooks/tolerances.yml`` states and justifies from measured spread
  (``python -m sidlib.book spread`` measures it; ``sidlib/book/nbval_plugin.py`` checks it).

Timings are neither: clock readings depend on the machine and its load, so they are shown in
``# NBVAL_IGNORE_OUTPUT`` cells and not compared with anything.
"""
from __future__ import annotations

import fnmatch
import math
import os
from pathlib import Path

import yaml

GLUE_MIME = "application/papermill.record/text/plain"  # what myst_nb.glue(..., display=False) writes
IGNORE_TAG = "nbval-ignore-output"
# The tolerances the checks use ($SIDLIB_TOLERANCES overrides it, for tests of the checks themselves).
TOLERANCES = Path(os.environ.get("SIDLIB_TOLERANCES", Path(__file__).resolve().parents[2] / "notebooks" / "tolerances.yml"))


class RecordError(AssertionError):
    """A recorded number that disagrees with the committed notebook, or a record the checks cannot judge."""


def record(name: str, value: float) -> float:
    """Store a measured number in the notebook's outputs under ``name`` (no visible output); return it."""
    from myst_nb import glue

    value = float(value)
    glue(name, value, display=False)
    return value


class _Words:
    """Text whose plain form is itself (no quotes), also offered as Markdown."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text

    def _repr_markdown_(self) -> str:
        return self.text


def record_text(name: str, text: str) -> str:
    """Store a word or phrase (e.g. a verdict) for the prose to cite, as ``{glue:md}`name``` on its page or
    ``{glue:text}`page.ipynb::name:s``` from another (myst-nb pastes only plain text across documents); return
    it. It carries Markdown, so :func:`recorded` (numbers only) leaves it out."""
    from myst_nb import glue

    glue(name, _Words(text), display=False)
    return text


def fixed(value: float, decimals: int) -> str:
    """``value`` with ``decimals`` decimals, never ``-0.00``: rounding noise must not flip a sign."""
    text = f"{value:.{decimals}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def recorded(outputs) -> dict[str, float]:
    """The numbers :func:`record` left in one cell's outputs (nbformat output dicts)."""
    values = {}
    for output in outputs or []:
        name = (output.get("metadata") or {}).get("scrapbook", {}).get("name")
        data = output.get("data") or {}
        text = data.get(GLUE_MIME)
        if name is not None and text is not None and GLUE_MIME.replace("plain", "markdown") not in data:
            values[name] = float("".join(text) if isinstance(text, list) else text)
    return values


def notebook_records(path: Path) -> dict[str, float]:
    """Every recorded number of a notebook file, by name."""
    import nbformat

    values = {}
    for cell in nbformat.read(str(path), as_version=4).cells:
        if cell.cell_type == "code":
            values.update(recorded(cell.get("outputs")))
    return values


def load_tolerances(path: Path = TOLERANCES) -> dict[str, dict[str, dict]]:
    """``{notebook stem: {name pattern: {"tolerance": float, "relative": bool, "unit": str, "why": str}}}``."""
    return yaml.safe_load(Path(path).read_text()) or {}


def tolerance_for(stem: str, name: str, tolerances: dict) -> dict:
    """The entry of ``tolerances`` whose pattern matches ``name`` in notebook ``stem`` (first match wins)."""
    for pattern, entry in (tolerances.get(stem) or {}).items():
        if fnmatch.fnmatchcase(name, pattern):
            return entry
    raise RecordError(f"{stem}: recorded number {name!r} has no tolerance; add a pattern for it, with the measured "
                      f"spread that justifies it, to notebooks/tolerances.yml")


def allowed_gap(entry: dict, committed: float) -> float:
    """The largest accepted gap to ``committed``: ``tolerance`` itself, or times ``|committed|`` when ``relative``."""
    return entry["tolerance"] * (abs(committed) if entry.get("relative") else 1.0)


def check_records(stem: str, fresh: dict[str, float], committed: dict[str, float], tolerances: dict) -> list[str]:
    """Compare one cell's fresh records with the committed ones; return the lines that fail."""
    problems = []
    for name in sorted(set(fresh) | set(committed)):
        if name not in committed or name not in fresh:
            where = "the committed notebook" if name not in committed else "this run"
            problems.append(f"{name}: not recorded by {where}; re-execute the notebook "
                            f"(python -m sidlib.book refresh notebooks/{stem}.ipynb)")
            continue
        entry = tolerance_for(stem, name, tolerances)
        gap = abs(fresh[name] - committed[name])
        allowed = allowed_gap(entry, committed[name])
        if not gap <= allowed or not math.isfinite(fresh[name]):
            problems.append(f"{name} = {fresh[name]:.6g}, committed {committed[name]:.6g}: differs by {gap:.3g} "
                            f"{entry.get('unit', '')}, more than the tolerance {allowed:.3g} "
                            f"({' '.join(entry['why'].split())})")
    return problems


def ignored_by_nbval(cell) -> bool:
    """Whether nbval skips comparing this cell's outputs (its comment marker or its tag)."""
    return "NBVAL_IGNORE_OUTPUT" in "".join(cell.get("source", "")) or IGNORE_TAG in cell.get("metadata", {}).get("tags", [])


def check_cell(notebook: Path, cell, fresh_outputs, tolerances: dict | None = None) -> None:
    """The nbval hook's check of one executed cell against the committed ``cell`` (raises :class:`RecordError`).

    Only cells nbval does not compare are checked here: a number recorded in a compared cell is
    deterministic, and nbval already compares its text exactly.
    """
    fresh, committed = recorded(fresh_outputs), recorded(cell.get("outputs"))
    if not (fresh or committed) or not ignored_by_nbval(cell):
        return
    stem = Path(notebook).stem
    problems = check_records(stem, fresh, committed, load_tolerances() if tolerances is None else tolerances)
    if problems:
        raise RecordError(f"{stem}: recorded numbers outside their tolerance:\n  " + "\n  ".join(problems))
