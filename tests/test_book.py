"""The book pipeline: presets, the runner, and the notebooks' structure."""
import configparser
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from sidlib.book import runner as book
from sidlib.book.notebook import ignored_by_nbval

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
NBCHECK = ROOT.parent / "shared" / "tools" / "nbcheck.py"


def test_every_notebook_has_presets_whose_names_are_its_parameters():
    for notebook in NOTEBOOKS:
        presets = book.presets_for(notebook)
        assert list(presets)[0] == "smoke" and presets["smoke"] == {}
        names = book.declared_parameters(notebook)
        if len(presets) > 1:  # an experiment notebook: it files results under its preset's name
            assert {"preset", "results_root"} <= names
        for preset, values in presets.items():
            unknown = set(values) - names
            assert not unknown, f"{notebook.name} preset {preset} sets unknown parameters {unknown}"


def test_experiment_notebooks_have_cpu_and_paper_presets():
    presets = book.presets_for(ROOT / "notebooks" / "02_sid_vs_bp.ipynb")
    assert {"smoke", "cpu", "paper"} <= set(presets)
    assert presets["paper"]["epochs"] == 100 and len(presets["paper"]["seeds"]) == 3
    assert len(presets["cpu"]["seeds"]) >= 2 and presets["cpu"]["train_subset"] is None


def test_declared_parameters_are_the_assigned_names():
    names = book.declared_parameters(ROOT / "notebooks" / "02_sid_vs_bp.ipynb")
    assert {"preset", "dataset", "epochs", "seeds", "results_root", "bench_depths"} <= names
    assert "config" not in names  # computed after the parameters cell


def test_largest_complete_preset(tmp_path):
    assert book.largest_complete_preset("nb", tmp_path) == (None, None)
    for preset in ("smoke", "cpu", "paper"):
        (tmp_path / "nb" / preset).mkdir(parents=True)
    (tmp_path / "nb" / "smoke" / book.COMPLETE_MARKER).write_text("{}")
    (tmp_path / "nb" / "cpu" / book.COMPLETE_MARKER).write_text("{}")
    assert book.largest_complete_preset("nb", tmp_path) == ("cpu", tmp_path / "nb" / "cpu")  # paper is incomplete


def test_committed_cpu_results_are_complete_and_real():
    summary = json.loads((ROOT / "results" / "02_sid_vs_bp" / "cpu" / "summary.json").read_text())
    runs = [json.loads(p.read_text()) for p in (ROOT / "results" / "02_sid_vs_bp" / "cpu").glob("*-seed*.json")]
    assert {r["config"]["method"] for r in runs} == {"sid", "bp"}
    assert all(len({r["config"]["seed"] for r in runs if r["config"]["method"] == m}) >= 2 for m in ("sid", "bp"))
    for run in runs:
        assert run["config"]["dataset"] == "fashion-mnist" and run["config"]["train_subset"] is None
        assert len(run["history"]) == run["config"]["epochs"] >= 2
        assert all(h["epoch_seconds"] > 10 for h in run["history"])  # full-size epochs, not a smoke run
    assert summary["preset"] == "cpu"


@pytest.mark.parametrize("folder", sorted((ROOT / "results").glob("*/cpu")), ids=lambda p: p.parent.name)
def test_every_committed_cpu_preset_ran_as_its_preset_says(folder):
    """Each run of a committed cpu preset has the preset's scale, its whole history, and two seeds or more.
    A preset still running (runs committed as they finish, no summary or executed notebook yet) has its
    finished runs checked the same way; the book does not show it until it is complete."""
    stem = folder.parent.name
    preset = book.presets_for(ROOT / "notebooks" / f"{stem}.ipynb")["cpu"]
    complete = (folder / f"{stem}.ipynb").is_file()  # the executed notebook the book shows
    runs = [json.loads(p.read_text()) for p in folder.rglob("*-seed*.json")]
    if not complete:
        assert runs and not (folder / book.COMPLETE_MARKER).exists(), f"{folder}: neither complete nor in progress"
        toc = (ROOT / "_toc.yml").read_text()
        assert f"results/{stem}/cpu" not in toc, f"{stem}'s cpu preset is in the book but has not finished"
    elif not runs:  # a measurement notebook (memory): its raw counts, nothing trained
        assert any(folder.glob("*.json"))
        return
    else:
        assert json.loads((folder / book.COMPLETE_MARKER).read_text())["preset"] == "cpu"
    seeds = {}
    for run in runs:
        c = run["config"]
        # a variant of the preset may set its own scale (notebook 16's FF trains on fewer images)
        expected = {**preset, **preset.get("variants", {}).get(run.get("variant"), {})}
        for key in ("epochs", "train_subset", "test_subset"):
            if key in expected:
                assert c[key] == expected[key], (run["command"], key)
        assert len(run["history"]) == c["epochs"]
        seeds.setdefault((c["dataset"], run.get("variant", c["method"])), set()).add(c["seed"])
    if complete:
        assert all(len(s) >= min(2, len(preset.get("seeds", [0, 1]))) for s in seeds.values()), seeds


COMMITTED_PRESETS = sorted(p.parent for p in (ROOT / "results").glob("*/*/*.ipynb") if p.stem == p.parent.parent.name)


@pytest.mark.parametrize("folder", COMMITTED_PRESETS, ids=lambda p: f"{p.parent.name}-{p.name}")
def test_each_committed_preset_would_train_the_same_if_run_now(folder):
    """A preset that leaves a parameter to the notebook's default would train something else once the
    default changes (a smaller smoke scale), and with reuse would show its old runs under the new
    settings: such a parameter must be pinned in notebooks/presets.yml."""
    changes = book.preset_changes(ROOT / "notebooks" / f"{folder.parent.name}.ipynb", folder.name)
    assert not changes, f"pin these in notebooks/presets.yml ({folder.parent.name}, {folder.name}): " + ", ".join(
        f"{name}: {then!r} (now {now!r})" for name, (then, now) in changes.items())


def test_a_changed_default_is_caught_unless_the_preset_pins_it(tmp_path):
    stem = "probe"
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "results" / stem / "cpu").mkdir(parents=True)

    def notebook(defaults, injected=None):
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(defaults, metadata={"tags": ["parameters"]})]
        nb.metadata["papermill"] = {"parameters": injected or {}}
        return nb

    nbformat.write(notebook('preset = "smoke"\nlr = 1e-3\nepochs = 2', {"preset": "cpu", "epochs": 5}),
                   tmp_path / "results" / stem / "cpu" / f"{stem}.ipynb")
    presets = tmp_path / "notebooks" / "presets.yml"
    presets.write_text("probe:\n  cpu:\n    epochs: 5\n")
    path = tmp_path / "notebooks" / f"{stem}.ipynb"
    nbformat.write(notebook('preset = "smoke"\nlr = 1e-3\nepochs = 1\nnew_option = 3'), path)
    assert book.preset_changes(path, "cpu") == {}  # a smaller smoke epoch count, pinned; a new parameter
    nbformat.write(notebook('preset = "smoke"\nlr = 3e-3\nepochs = 1'), path)
    assert book.preset_changes(path, "cpu") == {"lr": (1e-3, 3e-3)}
    presets.write_text("probe:\n  cpu:\n    epochs: 5\n    lr: 1.0e-3\n")
    assert book.preset_changes(path, "cpu") == {}


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "sidlib.book", *args], capture_output=True, text=True, timeout=120)


def test_runner_bad_input_is_one_line_exit_2(tmp_path):
    for args in (["run", str(tmp_path / "missing.ipynb")],
                 ["run", str(ROOT / "notebooks" / "02_sid_vs_bp.ipynb"), "--preset", "huge",
                  "--results-root", str(tmp_path)]):
        done = run_cli(*args)
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not any(tmp_path.rglob("*.ipynb"))


def sanitised_text_outputs(notebook):
    """The text outputs nbval compares, per code cell, with notebooks/sanitize.cfg applied."""
    parser = configparser.ConfigParser()
    parser.read(ROOT / "notebooks" / "sanitize.cfg")
    rules = [(re.compile(parser[s]["regex"]), parser[s]["replace"]) for s in parser.sections()]
    cells = []
    for cell in nbformat.read(notebook, as_version=4).cells:
        if cell.cell_type != "code" or "injected-parameters" in cell.metadata.get("tags", []):
            continue
        if ignored_by_nbval(cell):
            cells.append(None)
            continue
        text = []
        for output in cell.outputs:
            text.append(output.get("text", "") + output.get("data", {}).get("text/plain", ""))
        joined = "".join(text)
        for pattern, replacement in rules:
            joined = pattern.sub(replacement, joined)
        cells.append(joined)
    return cells


def test_smoke_preset_reproduces_the_committed_theory_notebook(tmp_path):
    notebook = ROOT / "notebooks" / "01_sid_lemma1_prop1.ipynb"
    executed = book.run(notebook, "smoke", results_root=tmp_path, log=lambda *_: None)
    assert executed == tmp_path / notebook.stem / "smoke" / notebook.name
    assert sanitised_text_outputs(executed) == sanitised_text_outputs(notebook)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").is_dir() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_a_killed_runner_takes_its_kernel_and_workers_down_and_leaves_no_partial_notebook(tmp_path):
    pids = tmp_path / "pids.txt"
    notebook = tmp_path / "grid.ipynb"  # a kernel that starts a worker process, as a grid with --workers does
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell(
        "import multiprocessing, os, time\n"
        "worker = multiprocessing.get_context('spawn').Process(target=time.sleep, args=(120,))\n"
        "worker.start()\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{worker.pid}}')\n"
        "time.sleep(120)")]
    nbformat.write(nb, notebook)
    script = ("import sys; from pathlib import Path; from sidlib.book import runner; runner.stop_on_sigterm(); "
              f"runner.execute(Path({str(notebook)!r}), {{}}, Path({str(tmp_path / 'out.ipynb')!r}))")
    process = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (pids.is_file() and len(pids.read_text().split()) == 2):
        assert time.monotonic() < deadline and process.poll() is None, "the notebook never started its worker"
        time.sleep(0.2)
    kernel, worker = map(int, pids.read_text().split())
    process.terminate()
    process.wait(timeout=60)
    deadline = time.monotonic() + 30
    while (_alive(kernel) or _alive(worker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(kernel) and not _alive(worker), "the kernel or its worker outlived the runner"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.ipynb", "pids.txt"], "a partial notebook was left"


@pytest.mark.skipif(not NBCHECK.is_file(), reason="../shared/tools/nbcheck.py is not beside this checkout")
def test_notebooks_pass_nbcheck_strict():
    folders = [str(ROOT / "notebooks")] + [str(p) for p in (ROOT / "results").glob("*/cpu")]
    done = subprocess.run([sys.executable, str(NBCHECK), "--strict", *folders], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
