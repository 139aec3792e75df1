"""The training loop: learning, determinism, exact resume, non-finite losses."""
from dataclasses import replace

import pytest
import torch

from helpers import config
from sidlib import data as datasets
from sidlib.methods import METHODS
from sidlib.train import CHECKPOINT_NAME, NonFiniteLoss, learning_rate_factor, train

DATA = datasets.load("synthetic")


def without_timings(history):
    return [{k: v for k, v in record.items() if not k.endswith("seconds")} for record in history]


@pytest.mark.parametrize("method", ["sid", "bp"])
def test_both_methods_learn_the_synthetic_task(method):
    result = train(config(method=method, depth=3, epochs=3, batch_size=64), data=DATA)
    assert result["final_test_acc"] > 60  # chance is 10%
    assert result["history"][-1]["train_loss"] < result["history"][0]["train_loss"]


def test_same_seed_same_history_other_seed_differs():
    cfg = config(depth=3, epochs=2, train_subset=500, label_noise=0.1, schedule="cosine")
    first, second = train(cfg), train(cfg)
    assert without_timings(first["history"]) == without_timings(second["history"])
    other = train(config(depth=3, epochs=2, train_subset=500, label_noise=0.1, schedule="cosine", seed=1))
    assert without_timings(other["history"]) != without_timings(first["history"])


def test_cosine_schedule():
    assert learning_rate_factor("cosine", 0, 100) == 1.0
    assert abs(learning_rate_factor("cosine", 50, 100) - 0.5) < 1e-12
    assert learning_rate_factor("cosine", 100, 100) < 1e-12
    assert learning_rate_factor("constant", 70, 100) == 1.0


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("method", ["sid", "bp"])
def test_resume_equals_an_uninterrupted_run(tmp_path, method):
    cfg = config(method=method, depth=2, epochs=2, train_subset=600, schedule="cosine", label_smoothing=0.1)
    whole = train(cfg, data=None)

    def stop_after_first(record):
        raise Interrupt

    with pytest.raises(Interrupt):
        train(cfg, checkpoint_dir=tmp_path, on_epoch_end=stop_after_first)
    assert torch.load(tmp_path / CHECKPOINT_NAME, weights_only=False)["epoch"] == 1
    resumed = train(cfg, checkpoint_dir=tmp_path, resume=True)
    assert without_timings(resumed["history"]) == without_timings(whole["history"])
    assert resumed["final_test_acc"] == whole["final_test_acc"]


def test_sll_resumes_exactly_with_its_projections(tmp_path):
    cfg = config(method="sll", model="mlp-2x800", epochs=2, train_subset=300, test_subset=100)
    whole = train(cfg)

    def stop_after_first(record):
        raise Interrupt

    with pytest.raises(Interrupt):
        train(cfg, checkpoint_dir=tmp_path, on_epoch_end=stop_after_first)
    resumed = train(cfg, checkpoint_dir=tmp_path, resume=True)
    assert without_timings(resumed["history"]) == without_timings(whole["history"])


def test_a_checkpoint_older_than_an_option_resumes_with_its_default(tmp_path):
    cfg = config(depth=2, epochs=2, train_subset=200)

    def stop_after_first(record):
        raise Interrupt

    with pytest.raises(Interrupt):
        train(cfg, checkpoint_dir=tmp_path, on_epoch_end=stop_after_first)
    path = tmp_path / CHECKPOINT_NAME
    checkpoint = torch.load(path, weights_only=False)
    for key in [k for k in checkpoint["config"] if k.startswith("sll_")] + ["optimizer", "width"]:
        del checkpoint["config"][key]  # as written before these options existed
    torch.save(checkpoint, path)
    assert len(train(cfg, checkpoint_dir=tmp_path, resume=True)["history"]) == 2


def test_resume_refuses_a_different_run(tmp_path):
    from sidlib.config import ConfigError
    train(config(depth=2, epochs=1, train_subset=200), checkpoint_dir=tmp_path)
    with pytest.raises(ConfigError, match="lr"):
        train(config(depth=2, epochs=2, train_subset=200, lr=0.01), checkpoint_dir=tmp_path, resume=True)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real_step = METHODS["sid"].step
    calls = {"n": 0}
    steps_per_epoch = 4  # 500 samples, batch 128

    def poisoned(*args):
        calls["n"] += 1
        loss = real_step(*args)
        return loss * float("nan") if calls["n"] == steps_per_epoch + 2 else loss

    monkeypatch.setitem(METHODS, "sid", replace(METHODS["sid"], step=poisoned))
    with pytest.raises(NonFiniteLoss, match="epoch 2.*last good checkpoint \\(epoch 1\\)"):
        train(config(depth=2, epochs=3, train_subset=500), checkpoint_dir=tmp_path)
    assert torch.load(tmp_path / CHECKPOINT_NAME, weights_only=False)["epoch"] == 1


def test_validation_accuracy_is_recorded_every_epoch_and_leaves_training_alone():
    with_val = train(config(depth=2, epochs=2, train_subset=300, val_split=200))
    assert [set(h) >= {"val_acc", "test_acc"} for h in with_val["history"]] == [True, True]
    assert with_val["final_val_acc"] == with_val["history"][-1]["val_acc"] and 0 <= with_val["final_val_acc"] <= 100
    without = train(config(depth=2, epochs=2, train_subset=300))
    assert "final_val_acc" not in without and all("val_acc" not in h for h in without["history"])
    with pytest.raises(ValueError, match="val_split"):
        train(config(depth=2, epochs=1, val_split=100), data=DATA)  # data loaded without the split


def scripted_validation(monkeypatch, accuracies):
    """Make the loop's validation accuracy follow ``accuracies`` (epoch by epoch); other splits as measured."""
    import sidlib.train as loop
    measured, calls = loop.evaluate, iter(accuracies)

    def evaluate(model, data, autocast=None, predict=None, split="test"):
        return next(calls) if split == "val" else measured(model, data, autocast, predict, split)

    monkeypatch.setattr(loop, "evaluate", evaluate)


def test_patience_stops_after_that_many_epochs_without_a_better_validation_accuracy(monkeypatch, tmp_path):
    scripted_validation(monkeypatch, [50.0, 60.0, 60.0, 59.0, 70.0, 71.0])
    cfg = config(depth=2, epochs=6, train_subset=300, val_split=200, patience=2)
    result = train(cfg, checkpoint_dir=tmp_path)
    # epoch 2 is the first of the best (ties do not count as improvement); epochs 3 and 4 did not improve on it
    assert [h["epoch"] for h in result["history"]] == [1, 2, 3, 4]
    assert result["best_val_epoch"] == 2 and result["best_val_acc"] == 60.0 and result["epochs_trained"] == 4
    assert result["best_val_test_acc"] == result["history"][1]["test_acc"]
    assert result["final_test_acc"] == result["history"][3]["test_acc"] and result["final_val_acc"] == 59.0
    # a stopped run, resumed, stays stopped (no validation is asked for again: the script has run out)
    resumed = train(cfg, checkpoint_dir=tmp_path, resume=True)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3, 4]


@pytest.mark.parametrize("patience, reported", [(2, [1, 2, 4]), (None, [1, 2, 5])])
def test_reported_test_epochs_are_the_best_validation_ones_and_the_last(monkeypatch, tmp_path, patience, reported):
    accuracies = [50.0, 60.0, 60.0, 59.0, 58.0]
    cfg = config(depth=2, epochs=5, train_subset=300, val_split=200, patience=patience)
    scripted_validation(monkeypatch, accuracies)
    every = train(cfg)
    scripted_validation(monkeypatch, accuracies)
    sparse = train(replace(cfg, test_epochs="reported"), checkpoint_dir=tmp_path)
    assert [h["epoch"] for h in sparse["history"] if h["test_acc"] is not None] == reported
    for dense_epoch, sparse_epoch in zip(every["history"], sparse["history"], strict=True):  # the training is the same
        assert dense_epoch["train_loss"] == sparse_epoch["train_loss"]
        assert sparse_epoch["test_acc"] in (None, dense_epoch["test_acc"])
    for key in ("best_val_epoch", "best_val_test_acc", "final_test_acc", "epochs_trained"):
        assert sparse[key] == every[key], key


def test_test_epochs_may_change_on_resume(tmp_path):
    cfg = config(depth=2, epochs=2, train_subset=300, val_split=200)
    train(replace(cfg, epochs=1), checkpoint_dir=tmp_path)
    resumed = train(replace(cfg, test_epochs="reported"), checkpoint_dir=tmp_path, resume=True)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2] and resumed["final_test_acc"] is not None


def test_without_patience_the_whole_budget_is_trained(monkeypatch):
    scripted_validation(monkeypatch, [50.0, 40.0, 30.0])
    result = train(config(depth=2, epochs=3, train_subset=300, val_split=200))
    assert result["epochs_trained"] == 3 and result["best_val_epoch"] == 1


def test_training_accuracy_is_measured_on_the_labels_as_given():
    from sidlib.train import evaluate, train_model
    cfg = config(method="sid", depth=3, epochs=3, batch_size=64, label_noise=0.3, track_train_acc=True)
    noisy = datasets.load("synthetic", label_noise=0.3, noise_seed=cfg.seed)
    model, result = train_model(cfg, data=noisy)
    assert all("train_acc" in h for h in result["history"])
    assert result["history"][-1]["train_acc"] == evaluate(model, noisy, split="train")
    clean = datasets.load("synthetic")
    # the network learns the true classes, so it agrees less with the labels it was given (30 % of them wrong)
    # than with the clean ones: here about 28 % against 22 %
    assert evaluate(model, clean, split="train") > result["history"][-1]["train_acc"] + 3


def test_the_cosine_schedule_is_annealed_over_every_optimiser_step_of_the_run():
    """200 samples in batches of 128: 2 steps an epoch, 4 in the run. After epoch 1 (step 2 of 4) the rate is
    the base rate times 0.5 (1 + cos(pi 2 / 4)) = 0.5; after epoch 2 (step 4 of 4), 0."""
    cfg = config(method="bp", depth=2, epochs=2, train_subset=200, test_subset=50, batch_size=128, schedule="cosine")
    lrs = [record["lr"] for record in train(cfg)["history"]]
    assert lrs[0] == pytest.approx(0.5 * cfg.lr, rel=1e-9)
    assert lrs[1] == pytest.approx(0.0, abs=1e-12)


def test_evaluation_predicts_in_eval_mode_and_leaves_the_network_training():
    """Every prediction evaluate makes sees the network in eval mode (dropout off: here at rate 0.9, so a
    training-mode forward would change the predictions), its accuracy is the eval-mode argmax's by hand,
    and the network is back in training mode afterwards."""
    from sidlib.models.mlp import mlp
    from sidlib.train import evaluate
    data = datasets.load("synthetic", test_subset=200)
    torch.manual_seed(0)
    model = mlp(data.info.input_shape, 10, [64], dropout=0.9)
    modes = []

    def predict(net, images):
        modes.append(net.training)
        return net(images)

    with torch.no_grad():
        model.eval()
        expected = 100 * (model(data.prepare(data.test_images)).argmax(1) == data.test_labels).double().mean().item()
    model.train()
    assert evaluate(model, data, predict=predict) == pytest.approx(expected)
    assert modes == [False] and model.training
