"""Measured numbers in notebooks: recorded, compared with tolerances, and the tolerances justified."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from sidlib.book import runner as book
from sidlib.book.notebook import (GLUE_MIME, allowed_gap, RecordError, check_cell, check_records, fixed, ignored_by_nbval,
                             load_tolerances, notebook_records, recorded, tolerance_for)

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SPREAD = ROOT / "results" / "spread"
TOLERANCES = {"nb": {"acc_*": {"tolerance": 1.0, "unit": "points", "why": "measured"}}}


def glue_output(name, value):
    # what myst_nb.glue(name, value, display=False) leaves in a cell's outputs
    return {"output_type": "display_data", "data": {GLUE_MIME: repr(value)},
            "metadata": {"scrapbook": {"name": name, "mime_prefix": "application/papermill.record/"}}}


def test_fixed_never_prints_negative_zero():
    assert fixed(-1e-12, 4) == "0.0000" and fixed(-0.0, 2) == "0.00" and fixed(1e-12, 4) == "0.0000"
    assert fixed(-0.25, 2) == "-0.25" and fixed(-0.00005, 4) == "-0.0001"  # a real sign is kept
    assert fixed(2.5, 0) in ("2", "3")


def test_recorded_reads_glue_outputs_and_nothing_else():
    outputs = [{"output_type": "stream", "name": "stdout", "text": "acc 12.5\n"},
               glue_output("acc_sid", 12.5), glue_output("acc_bp", 30.25)]
    assert recorded(outputs) == {"acc_sid": 12.5, "acc_bp": 30.25}
    assert recorded([]) == {} and recorded(None) == {}


def test_check_records_passes_inside_and_fails_outside_the_tolerance():
    assert check_records("nb", {"acc_sid": 30.0}, {"acc_sid": 30.9}, TOLERANCES) == []
    problems = check_records("nb", {"acc_sid": 30.0}, {"acc_sid": 31.5}, TOLERANCES)
    assert len(problems) == 1 and "differs by 1.5" in problems[0] and "measured" in problems[0]
    assert check_records("nb", {"acc_sid": math.nan}, {"acc_sid": 30.0}, TOLERANCES)
    assert check_records("nb", {}, {"acc_sid": 30.0}, TOLERANCES)  # a record that disappeared
    assert check_records("nb", {"acc_sid": 30.0, "acc_new": 1.0}, {"acc_sid": 30.0}, TOLERANCES)  # a new one


def test_a_relative_tolerance_scales_with_the_committed_value():
    relative = {"nb": {"norm": {"tolerance": 0.5, "relative": True, "why": "measured"}}}
    assert check_records("nb", {"norm": 14.9}, {"norm": 10.0}, relative) == []
    assert check_records("nb", {"norm": 15.1}, {"norm": 10.0}, relative)
    assert check_records("nb", {"norm": -0.1}, {"norm": 0.0}, relative)  # zero committed: exact


def test_a_record_without_a_tolerance_is_an_error():
    with pytest.raises(RecordError, match="no tolerance"):
        check_records("nb", {"loss": 1.0}, {"loss": 1.0}, TOLERANCES)
    with pytest.raises(RecordError, match="no tolerance"):
        tolerance_for("other", "acc_sid", TOLERANCES)


def test_check_cell_judges_only_cells_nbval_does_not_compare():
    committed = nbformat.v4.new_code_cell("# NBVAL_IGNORE_OUTPUT\nrecord('acc_sid', x)")
    committed.outputs = [nbformat.from_dict(glue_output("acc_sid", 30.0))]
    assert ignored_by_nbval(committed)
    check_cell(Path("nb.ipynb"), committed, [glue_output("acc_sid", 30.5)], TOLERANCES)
    with pytest.raises(RecordError, match="outside their tolerance"):
        check_cell(Path("nb.ipynb"), committed, [glue_output("acc_sid", 35.0)], TOLERANCES)
    compared = nbformat.v4.new_code_cell("record('acc_sid', x)")  # nbval compares its text exactly
    compared.outputs = committed.outputs
    check_cell(Path("nb.ipynb"), compared, [glue_output("acc_sid", 35.0)], TOLERANCES)


def test_every_recorded_number_has_a_justified_tolerance():
    tolerances = load_tolerances()
    for notebook in NOTEBOOKS:
        for name in notebook_records(notebook):
            entry = tolerance_for(notebook.stem, name, tolerances)
            assert entry["tolerance"] > 0 and len(entry["why"].split()) >= 5, (notebook.stem, name)
    assert set(tolerances) <= {n.stem for n in NOTEBOOKS}, "tolerances for a notebook that does not exist"


def test_tolerances_cover_the_measured_spread_between_machines():
    """Each tolerance is at least the largest gap measured between machines (results/spread/)."""
    tolerances = load_tolerances()
    tables = sorted(SPREAD.glob("*.json"))
    assert {t.stem for t in tables} == set(tolerances), "measure the spread of every notebook with tolerances"
    for table_path in tables:
        table = json.loads(table_path.read_text())
        assert len({r["label"] for r in table["runs"]}) >= 3, f"{table_path.name}: too few machines measured"
        for name, row in book.spread_summary(table).items():
            entry = tolerance_for(table_path.stem, name, tolerances)
            reference = next(r for r in table["runs"] if r["label"] == "native" and r["seed"] == 0)["records"][name]
            allowed = allowed_gap(entry, reference)
            assert row["machine_spread"] <= allowed, (table_path.stem, name, row, allowed)


def test_the_nbval_hook_fails_a_cell_whose_record_moved(tmp_path):
    """End to end: nbval plus sidlib's plugin on a notebook whose committed record differs."""
    (tmp_path / "tolerances.yml").write_text("toy:\n  value:\n    tolerance: 0.1\n    why: a test of the hook itself\n")
    for committed_value, expect_pass in ((1.05, True), (1.5, False)):
        cell = nbformat.v4.new_code_cell("# NBVAL_IGNORE_OUTPUT\nfrom sidlib.book.notebook import record\nrecord('value', 1.0)",
                                         execution_count=1)
        cell.outputs = [nbformat.from_dict(glue_output("value", committed_value))]
        notebook = tmp_path / "toy.ipynb"
        nbformat.write(nbformat.v4.new_notebook(cells=[cell]), notebook)
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "sidlib.book.nbval_plugin",
                               "--nbval", "--nbval-current-env", str(notebook)], capture_output=True, text=True,
                              cwd=tmp_path, env={**os.environ, "SIDLIB_TOLERANCES": str(tmp_path / "tolerances.yml")},
                              timeout=300)
        assert (done.returncode == 0) == expect_pass, done.stdout[-2000:]
        if not expect_pass:
            assert "differs by 0.5" in done.stdout


def test_spread_summary_aligns_seed_names_and_separates_seeds_from_machines():
    runs = [{"label": "native", "seed": 0, "records": {"sid_seed0_acc": 30.0}},
            {"label": "native", "seed": 1, "records": {"sid_seed1_acc": 34.0}},
            {"label": "baseline", "seed": 0, "records": {"sid_seed0_acc": 30.5}},
            {"label": "torch-2.4.0", "seed": 0, "records": {"sid_seed0_acc": 29.0}}]
    row = book.spread_summary({"runs": runs})["sid_seed0_acc"]
    assert row["seed_spread"] == 4.0 and row["machine_spread"] == 1.0
    assert row["machines"] == ["baseline", "native", "torch-2.4.0"]
    with pytest.raises(book.BookError):
        book.spread_summary({"runs": runs[1:2]})


def test_spread_refuses_a_notebook_without_a_seed(tmp_path):
    cell = nbformat.v4.new_code_cell("rows = 10", metadata={"tags": ["parameters"]})
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), tmp_path / "plain.ipynb")
    with pytest.raises(book.BookError, match="neither 'seed' nor 'seeds'"):
        book.measure_spread(tmp_path / "plain.ipynb", [0], "native", tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_spread_runs_each_seed_in_its_own_smoke_folder_and_reads_committed_presets(tmp_path):
    """A spread run must not read an earlier seed's smoke runs back, nor overwrite the committed ones;
    it still sees the committed larger presets, as the book does."""
    (tmp_path / "notebooks").mkdir()
    committed = tmp_path / "results" / "probe"
    (committed / "cpu").mkdir(parents=True)
    (committed / "cpu" / "summary.json").write_text("{}")
    (committed / "smoke").mkdir()
    (committed / "smoke" / "old-run.json").write_text("{}")
    parameters = nbformat.v4.new_code_cell("seeds = [0]\nresults_root = '../results'", metadata={"tags": ["parameters"]})
    body = nbformat.v4.new_code_cell(
        "import os\nfrom sidlib.book.notebook import record\n"
        "smoke = os.path.join(results_root, 'probe', 'smoke')\n"
        "record('smoke_runs_before', float(len(os.listdir(smoke)) if os.path.isdir(smoke) else 0))\n"
        "record('sees_cpu', float(os.path.isfile(os.path.join(results_root, 'probe', 'cpu', 'summary.json'))))\n"
        "os.makedirs(smoke, exist_ok=True)\n"
        "open(os.path.join(smoke, f'run-{seeds[0]}.json'), 'w').write('{}')")
    nb = nbformat.v4.new_notebook(cells=[parameters, body], metadata={"kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"}})
    nbformat.write(nb, tmp_path / "notebooks" / "probe.ipynb")
    table = book.measure_spread(tmp_path / "notebooks" / "probe.ipynb", [0, 1], "native", tmp_path / "spread.json",
                                log=lambda *_: None)
    assert [r["records"]["smoke_runs_before"] for r in table["runs"]] == [0.0, 0.0]
    assert [r["records"]["sees_cpu"] for r in table["runs"]] == [1.0, 1.0]
    assert sorted(p.name for p in (committed / "smoke").iterdir()) == ["old-run.json"]


# Records the notebooks read back from committed presets (results, not checks of this run) and records
# that sit at chance by design: neither is a check that the smoke run learnt.
READ_BACK = ("shown_", "cpu_")
AT_CHANCE_BY_DESIGN = {"25_sid_feature_space": ("untrained_",)}  # the untrained network's own read-out
CHANCE_MARGIN = 5.0  # points: a band this close to a constant predictor cannot tell a broken method from a working one
# Smoke scales not yet redesigned to learn (issue 25): each fails the check below, strictly
NOT_YET_LEARNING = {"10_sll_cnn_fmnist", "13_sll_vit", "18_sll_cnn_baselines", "26_sid_architectures"}


def constant_predictor_accuracy(dataset: str, test_subset) -> float:
    """The test accuracy (%) of always predicting the most frequent test class."""
    from sidlib import data as datasets
    labels = datasets.load(dataset, str(ROOT / "data"), "cpu", train_subset=1, test_subset=test_subset).test_labels
    return 100.0 * labels.bincount().max().item() / len(labels)


def accuracy_checks(notebook: Path) -> dict[str, tuple[float, str]]:
    """{record: (value, dataset)} for the accuracies the notebook's smoke run measures and nbval checks."""
    defaults = book.parameter_defaults(notebook)
    names = defaults.get("datasets") or [defaults["dataset"]]
    exempt = READ_BACK + AT_CHANCE_BY_DESIGN.get(notebook.stem, ())
    checks = {}
    for name, value in notebook_records(notebook).items():
        if name.endswith("_acc") and not name.startswith(exempt):
            dataset = next((d for d in names if name.startswith(f"{d}_")), names[0])
            checks[name] = (value, dataset)
    return checks


@pytest.mark.parametrize("notebook", [n for n in NOTEBOOKS if "dataset" in book.parameter_defaults(n)
                                      or "datasets" in book.parameter_defaults(n)], ids=lambda n: n.stem)
def test_every_accuracy_check_sits_clearly_above_a_constant_predictor(notebook, request):
    """A smoke run that learns nothing scores what a constant guess scores; a tolerance band reaching
    within CHANCE_MARGIN points of it would pass a broken method. So the band's lower edge must sit
    above the constant predictor's accuracy on the same test set by that margin."""
    if notebook.stem in NOT_YET_LEARNING:
        request.applymarker(pytest.mark.xfail(strict=True, reason="its smoke scale is not yet redesigned to learn"))
    tolerances = load_tolerances()
    test_subset = book.parameter_defaults(notebook).get("test_subset")
    chance = {}
    low = []
    for name, (value, dataset) in accuracy_checks(notebook).items():
        if dataset not in chance:
            chance[dataset] = constant_predictor_accuracy(dataset, test_subset)
        band_floor = value - allowed_gap(tolerance_for(notebook.stem, name, tolerances), value)
        if band_floor < chance[dataset] + CHANCE_MARGIN:
            low.append(f"{name} = {value:.2f} (band down to {band_floor:.2f}, constant predictor {chance[dataset]:.2f})")
    assert not low, f"{notebook.stem}: accuracy checks too close to chance: " + "; ".join(low)


BIND_FACTOR = 3.0  # a tolerance may be at most this many times the larger of the machine spread and its floor
# Notebooks whose tolerances predate the rule below (issue 25): each fails it, strictly
TOLERANCES_NOT_YET_BOUND = {"03_sid_monotonic_descent", "05_sid_time_memory",
                            "06_sid_stale_teachers", "10_sll_cnn_fmnist", "11_sll_mlp", "13_sll_vit",
                            "14_sll_projection_width", "15_sll_ablation", "17_sll_mlp_baselines",
                            "18_sll_cnn_baselines", "23_sid_kl_direction", "24_sid_converge_refine",
                            "25_sid_feature_space", "26_sid_architectures", "27_sid_depth_resnet"}


def binding_problems(stem: str, table: dict, tolerances: dict) -> list[str]:
    """Where a tolerance of ``stem`` is too wide to bind (above BIND_FACTOR x max(machine spread, the
    entry's stated ``floor``)), or where a recorded quantity is chaotic (the machines differ by as much
    as the seeds: such a number is shown, not checked, and its claim asserted instead)."""
    reference = next(r for r in table["runs"] if r["label"] == "native" and r["seed"] == 0)["records"]
    problems = []
    for name, row in book.spread_summary(table).items():
        entry = tolerance_for(stem, name, tolerances)
        allowed = allowed_gap(entry, reference[name])
        floor = allowed_gap({**entry, "tolerance": entry.get("floor", 0.0)}, reference[name])
        machines, seeds = row["machine_spread"], row["seed_spread"]
        if math.isnan(machines):
            continue
        if allowed > BIND_FACTOR * max(machines, floor) * (1 + 1e-9):
            problems.append(f"{name}: tolerance {allowed:.4g} > {BIND_FACTOR:g} x max(machine spread {machines:.4g}, "
                            f"floor {floor:.4g})")
        if machines > 0 and machines >= seeds:
            problems.append(f"{name}: machines differ by {machines:.4g}, seeds by {seeds:.4g}: chaotic, show it instead")
    return problems


@pytest.mark.parametrize("table", sorted(SPREAD.glob("*.json")), ids=lambda p: p.stem)
def test_every_tolerance_binds(table, request):
    """About 2x the machine spread, never far above it: a tolerance 10-30 times the spread passes
    changes a real mistake would make. An entry may state a ``floor`` (e.g. half the last printed
    decimal of a number read back from committed results), justified in its ``why``."""
    if table.stem in TOLERANCES_NOT_YET_BOUND:
        request.applymarker(pytest.mark.xfail(strict=True, reason="its tolerances predate the binding rule"))
    problems = binding_problems(table.stem, json.loads(table.read_text()), load_tolerances())
    assert not problems, f"{table.stem}: " + "; ".join(problems[:8]) + (f" (and {len(problems) - 8} more)" if len(problems) > 8 else "")


def test_binding_catches_a_wide_tolerance_and_a_chaotic_record():
    runs = [{"label": "native", "seed": 0, "records": {"acc": 50.0, "read": 1.25}},
            {"label": "native", "seed": 1, "records": {"acc": 53.0, "read": 1.25}},
            {"label": "avx2", "seed": 0, "records": {"acc": 50.2, "read": 1.25}}]
    tolerances = {"nb": {"acc": {"tolerance": 0.5, "why": "x"}, "read": {"tolerance": 0.005, "floor": 0.005, "why": "x"}}}
    assert binding_problems("nb", {"runs": runs}, tolerances) == []
    tolerances["nb"]["acc"]["tolerance"] = 1.0  # 5x the spread of 0.2
    assert "acc: tolerance 1 > 3 x max" in binding_problems("nb", {"runs": runs}, tolerances)[0]
    runs[2]["records"]["acc"] = 54.0  # the machines differ more than the seeds
    assert any("chaotic" in p for p in binding_problems("nb", {"runs": runs}, tolerances))
