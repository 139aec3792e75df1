"""Experiment grids: files per run, reuse, summaries, and the reproducing command line."""
import json
import statistics
from pathlib import Path

import pytest

from helpers import config
from sidlib import cli
from sidlib.book import experiments, tables
from sidlib.config import TrainConfig


def test_cli_command_parses_back_to_the_same_config():
    cfg = config(method="bp", depth=7, epochs=3, lr=3e-4, alpha=0.3, kl="reverse", label_smoothing=0.1,
                 schedule="cosine", label_noise=0.2, train_subset=500, seed=4, precision="bf16", extractor="final_layer",
                 optimizer="adamax", sll_codes=20, sll_first_prior="none", sll_unit=2, sll_dropout=0.0)
    command = experiments.cli_command(cfg).split()
    assert command[:4] == ["python", "-m", "sidlib", "train"]
    args = cli._parser().parse_args(command[3:])
    parsed = TrainConfig(**{k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__})
    assert parsed == cfg


def test_variants_are_named_changes_to_the_base_config(tmp_path):
    base = config(method="sll", model="mlp-2x800", epochs=1, train_subset=100, test_subset=50, batch_size=50)
    variants = {"sll": {}, "no-bhattacharyya": {"sll_weight": 0.0}}
    runs = experiments.run_grid(base, variants, [0], tmp_path, log=lambda line: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["no-bhattacharyya-seed0.json", "sll-seed0.json"]
    assert [r["variant"] for r in runs] == ["sll", "no-bhattacharyya"]
    assert runs[1]["config"]["sll_weight"] == 0.0 and "--sll-weight 0.0" in runs[1]["command"]
    rows = experiments.summarise(experiments.load_runs(tmp_path))
    assert [(r["variant"], r["method"]) for r in rows] == [("no-bhattacharyya", "sll"), ("sll", "sll")]
    assert set(experiments.learning_curves(runs)) == {"sll", "no-bhattacharyya"}


def test_run_grid_writes_one_file_per_run_and_reuses_them(tmp_path, monkeypatch):
    base = config(depth=2, epochs=2, train_subset=300)
    lines = []
    runs = experiments.run_grid(base, ["sid", "bp"], [0, 1], tmp_path, log=lines.append)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bp-seed0.json", "bp-seed1.json", "sid-seed0.json",
                                                         "sid-seed1.json"]
    saved = json.loads((tmp_path / "sid-seed1.json").read_text())
    assert saved["config"]["seed"] == 1 and saved["command"].endswith("--no-progress")
    assert saved == runs[1]

    def no_training(*args, **kwargs):
        raise AssertionError("reuse must not retrain")

    monkeypatch.setattr(experiments, "train", no_training)
    again = experiments.run_grid(base, ["sid", "bp"], [0, 1], tmp_path, reuse=True, log=lines.append)
    assert again == runs


def test_a_fresh_grid_leaves_no_run_of_earlier_defaults_beside_its_own(tmp_path, monkeypatch):
    """An earlier execution with two seeds, then one with one seed (a smaller smoke scale): the folder
    holds the new execution's runs only, and a second grid of the same execution keeps the first's."""
    base = config(depth=2, epochs=1, train_subset=100)
    experiments.run_grid(base, ["sid", "bp"], [0, 1], tmp_path)
    monkeypatch.setattr(experiments, "_CLEARED", set())  # a new notebook kernel
    experiments.run_grid(base, ["sid"], [0], tmp_path)
    experiments.run_grid(base, ["bp"], [0], tmp_path)  # the same kernel's second grid
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["bp-seed0.json", "sid-seed0.json"]
    assert {(experiments.variant_of(r), r["config"]["seed"]) for r in experiments.load_runs(tmp_path)} == {
        ("sid", 0), ("bp", 0)}


def test_a_run_another_page_has_converged_is_copied_not_retrained(tmp_path, monkeypatch):
    base = config(depth=2, epochs=1, train_subset=300)
    (made,) = experiments.run_grid(base, ["sid"], [0], tmp_path / "02_page" / "converged", log=lambda line: None)
    experiments.run_grid(base, ["bp"], [0], tmp_path / "03_page" / "cpu", log=lambda line: None)  # not converged: not shared
    trained = []
    real_train = experiments.train
    monkeypatch.setattr(experiments, "train", lambda cfg, **kw: trained.append(cfg.method) or real_train(cfg, **kw))
    lines = []
    monkeypatch.chdir(tmp_path / "02_page")  # as a notebook's kernel does: the results folder relative to it
    runs = experiments.run_grid(base, {"alpha50": {"method": "sid"}, "alpha30": {"method": "sid", "alpha": 0.3},
                                       "bp": {"method": "bp"}}, [0], Path("../20_page/converged"),
                                reuse=True, log=lines.append)
    assert trained == ["sid", "bp"]  # alpha 0.3 and BP have no converged twin
    copied = runs[0]
    assert copied["copied_from"] == "02_page/converged/sid-seed0.json" and "copied from" in lines[0]
    assert {**copied, "variant": "sid"} == {**made, "copied_from": copied["copied_from"]}
    assert json.loads((tmp_path / "20_page" / "converged" / "alpha50-seed0.json").read_text()) == copied
    assert "copied from 02_page/converged/, the same commands: alpha50" in tables.provenance("converged", runs).splitlines()
    trained.clear()  # without reuse, every run is trained
    experiments.run_grid(base, {"alpha50": {"method": "sid"}}, [0], tmp_path / "21_page" / "converged", log=lambda line: None)
    assert trained == ["sid"]


def test_an_analysis_of_each_trained_network_is_kept_with_its_run(tmp_path, monkeypatch):
    base = config(depth=2, epochs=1, train_subset=200, test_subset=100, label_noise=0.2)
    seen = []

    def analyse(model, data, cfg):
        seen.append((model.training, cfg.seed, cfg.label_noise, len(data.test_labels)))
        return {"seed": cfg.seed, "accuracy": float(len(data.train_labels))}

    runs = experiments.run_grid(base, ["sid"], [0, 1], tmp_path, log=lambda line: None, analyse=analyse)
    # eval mode, each run's own (noisy, seeded) data, and the answer saved in the run's file
    assert seen == [(False, 0, 0.2, 100), (False, 1, 0.2, 100)]
    assert [r["analysis"] for r in runs] == [{"seed": 0, "accuracy": 200.0}, {"seed": 1, "accuracy": 200.0}]
    assert json.loads((tmp_path / "sid-seed1.json").read_text())["analysis"] == {"seed": 1, "accuracy": 200.0}
    # a kept run that lacks the analysis is retrained, the others are read back
    without = json.loads((tmp_path / "sid-seed0.json").read_text())
    del without["analysis"]
    (tmp_path / "sid-seed0.json").write_text(json.dumps(without))
    seen.clear()
    again = experiments.run_grid(base, ["sid"], [0, 1], tmp_path, reuse=True, log=lambda line: None, analyse=analyse)
    assert seen == [(False, 0, 0.2, 100)] and again[1] == runs[1]
    assert again[0]["analysis"] == runs[0]["analysis"] and again[0]["final_test_acc"] == runs[0]["final_test_acc"]


def test_summaries_against_a_hand_computation():
    def fake(method, seed, accs):
        return {"config": {"method": method, "seed": seed, "epochs": len(accs)},
                "history": [{"test_acc": a, "epoch_seconds": 10.0 + seed} for a in accs], "final_test_acc": accs[-1]}

    runs = [fake("sid", 0, [50, 60, 70]), fake("sid", 1, [55, 75, 72]), fake("bp", 0, [40, 45, 50])]
    rows = {r["method"]: r for r in experiments.summarise(runs)}
    assert rows["sid"]["final_acc_mean"] == 71 and rows["sid"]["final_acc_std"] == pytest.approx(statistics.stdev([70, 72]))
    assert rows["sid"]["best_acc_mean"] == (70 + 75) / 2 and rows["sid"]["epoch_seconds_median"] == 10.5
    assert rows["bp"]["final_acc_std"] == 0.0 and rows["bp"]["seeds"] == [0]
    curves = experiments.learning_curves(runs)
    assert curves["sid"]["mean"] == [52.5, 67.5, 71] and curves["sid"]["min"] == [50, 60, 70]
    assert curves["sid"]["max"] == [55, 75, 72] and curves["bp"]["epoch"] == [1, 2, 3]
    # a run stopped early: later epochs average the seeds still training
    stopped = experiments.learning_curves([fake("sid", 0, [50, 60]), fake("sid", 1, [55, 75, 72])])["sid"]
    assert stopped["epoch"] == [1, 2, 3] and stopped["mean"] == [52.5, 67.5, 72] and stopped["min"] == [50, 60, 72]


def test_the_epoch_selected_on_validation_and_its_test_accuracy():
    def fake(seed, val, test):
        history = [{"epoch": e + 1, "val_acc": v, "test_acc": t, "epoch_seconds": 1.0} for e, (v, t) in enumerate(zip(val, test))]
        return {"config": {"method": "sid", "seed": seed, "epochs": len(val)}, "history": history,
                "final_test_acc": test[-1], "final_val_acc": val[-1]}

    # seed 0: validation peaks at epoch 2 (tied with 3: the first is taken); seed 1: at the last epoch.
    # The test set's own best (epoch 3 of seed 0, 90) is not what selection on validation reports.
    runs = [fake(0, [50, 70, 70], [55, 65, 90]), fake(1, [40, 60, 80], [45, 62, 81])]
    assert experiments.selected_epoch(runs[0])["epoch"] == 2 and experiments.selected_epoch(runs[1])["epoch"] == 3
    row, = experiments.summarise(runs)
    assert row["selected_epochs"] == [2, 3] and row["selected_acc_mean"] == (65 + 81) / 2
    assert row["best_acc_mean"] == (90 + 81) / 2 and row["final_acc_mean"] == (90 + 81) / 2
    assert row["final_val_acc_mean"] == 75 and row["selected_acc_std"] == pytest.approx(statistics.stdev([65, 81]))
    no_val = {"config": {"method": "bp", "seed": 0, "epochs": 1}, "history": [{"epoch": 1, "test_acc": 50, "epoch_seconds": 1.0}],
              "final_test_acc": 50}
    assert "selected_acc_mean" not in experiments.summarise([no_val])[0]
    with pytest.raises(ValueError, match="--val-split"):
        experiments.selected_epoch(no_val)


def test_tuning_on_validation_picks_the_setting_validation_prefers_not_the_test_set():
    def fake(variant, seed, val, test):
        history = [{"epoch": e + 1, "val_acc": v, "test_acc": t, "epoch_seconds": 1.0} for e, (v, t) in enumerate(zip(val, test))]
        return {"variant": variant, "config": {"method": variant.split("-")[0], "seed": seed, "epochs": len(val)},
                "history": history, "final_test_acc": test[-1], "final_val_acc": val[-1]}

    # bp-lr1 has the better test accuracy, bp-lr2 the better validation accuracy at its selected
    # epochs (mean of 80 and 78 against 79 and 75): tuning must take bp-lr2 and report its test number
    runs = [fake("bp-lr1", 0, [70, 79], [60, 90]), fake("bp-lr1", 1, [75, 70], [88, 70]),
            fake("bp-lr2", 0, [80, 60], [70, 95]), fake("bp-lr2", 1, [50, 78], [40, 72]),
            fake("sid-lr1", 0, [99, 99], [99, 99])]
    rows = experiments.summarise(runs)
    by_name = {row["variant"]: row for row in rows}
    assert by_name["bp-lr2"]["selected_val_acc_mean"] == 79 and by_name["bp-lr1"]["selected_val_acc_mean"] == 77
    tuned = experiments.tuned_on_validation(rows, ["bp-lr1", "bp-lr2"])
    assert tuned["variant"] == "bp-lr2" and tuned["selected_acc_mean"] == (70 + 72) / 2
    with pytest.raises(ValueError, match="--val-split"):
        experiments.tuned_on_validation(rows, ["bp-lr3"])


def test_provenance_names_the_variants_whose_scale_or_hardware_differs():
    def fake(variant, seed, train_subset, threads):
        return {"variant": variant, "final_test_acc": 50.0 + seed, "history": [{"test_acc": 50.0 + seed, "epoch_seconds": 1.0}],
                "config": {"method": variant, "seed": seed, "dataset": "fashion-mnist", "train_subset": train_subset,
                           "test_subset": None, "epochs": 1, "batch_size": 128, "optimizer": "adam", "lr": 0.001,
                           "schedule": "cosine", "precision": "fp32", "model": "simplecnn"},
                "environment": {"device": "cpu", "processor": "x", "threads": threads, "torch": "2"},
                "command": f"python -m sidlib train --method {variant} --seed {seed}"}

    same = [fake("bp", s, None, 2) for s in (0, 1)] + [fake("sid", s, None, 2) for s in (0, 1)]
    text = tables.provenance("cpu", same)
    assert "all training images, all test images" in text and "hardware: cpu (x, 2 threads), torch 2\n" in text
    assert all("training images" not in row["protocol"] for row in tables.accuracy_rows(same, []))
    mixed = [fake("bp", s, None, 1) for s in (0, 1)] + [fake("ff", s, 20000, 2) for s in (0, 1)]
    lines = tables.provenance("cpu", mixed).splitlines()
    assert "all training images (bp); 20000 training images (ff)," in lines[0]
    assert lines[1:3] == ["hardware: cpu (x, 1 threads), torch 2 (bp)", "hardware: cpu (x, 2 threads), torch 2 (ff)"]
    assert lines[3:] == ["commands:", "  python -m sidlib train --method bp --seed S",
                         "  python -m sidlib train --method ff --seed S"]
    protocols = {row["method"]: row["protocol"] for row in tables.accuracy_rows(mixed, [])}
    assert protocols == {"bp (ours)": "1 epochs, 2 seeds, all training images",
                         "ff (ours)": "1 epochs, 2 seeds, 20000 training images"}


def test_bench_ratios_divide_by_the_baseline_of_the_same_run():
    records = [{"method": "bp", "step_seconds": 0.2, "peak_saved_bytes": 1000},
               {"method": "sid", "step_seconds": 0.3, "peak_saved_bytes": 250}]
    ratios = tables.bench_ratios(records)
    assert ratios["bp"] == {"time": 1.0, "saved": 1.0}
    assert ratios["sid"]["time"] == pytest.approx(1.5) and ratios["sid"]["saved"] == 0.25
    assert tables.bench_ratios(records, baseline="sid")["bp"]["saved"] == 4.0


def test_record_shown_names_each_variants_accuracy_and_each_methods_ratios(monkeypatch):
    import sidlib.book.notebook

    recorded = {}
    monkeypatch.setattr(sidlib.book.notebook, "record", lambda name, value: recorded.setdefault(name, value))
    runs = [{"variant": "noprop-authors", "final_test_acc": acc, "history": [{"test_acc": acc, "epoch_seconds": 1.0}],
             "config": {"method": "noprop", "seed": seed, "epochs": 1}} for seed, acc in ((0, 70.0), (1, 74.0))]
    tables.record_shown(runs, {"noprop": {"time": 1.25, "saved": 0.5}})
    assert recorded == {"shown_noprop-authors_acc": 72.0, "shown_noprop-authors_acc_std": pytest.approx(statistics.stdev([70, 74])),
                        "shown_noprop_time": 1.25, "shown_noprop_saved": 0.5}
