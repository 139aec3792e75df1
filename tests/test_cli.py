"""The command line: the happy path's JSON contract, and one clear line with exit code 2 for bad input."""
import json
import os
import subprocess
import sys

import pytest

TRAIN = ["train", "--dataset", "synthetic", "--depth", "2", "--epochs", "1", "--train-subset", "200",
         "--no-progress", "--device", "cpu"]


def sidlib(*args, cwd):
    env = dict(os.environ, SIDLIB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "sidlib", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def test_train_writes_the_results_contract(tmp_path):
    out = tmp_path / "run.json"
    done = sidlib(*TRAIN, "--method", "bp", "--out", str(out), "--checkpoint-dir", str(tmp_path / "ck"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    config = result["config"]
    for option in ("method", "model", "dataset", "depth", "epochs", "batch_size", "lr", "alpha", "kl",
                   "label_smoothing", "schedule", "label_noise", "train_subset", "data_root", "seed", "device",
                   "precision", "out", "checkpoint_dir", "resume", "no_progress", "extractor"):
        assert option in config, option
    assert config["method"] == "bp" and config["train_subset"] == 200
    (record,) = result["history"]
    assert {"epoch", "train_loss", "test_acc", "epoch_seconds"} <= set(record)
    assert 0 <= result["final_test_acc"] <= 100 and result["train_seconds"] > 0
    assert {"torch", "device", "threads"} <= set(result["environment"])
    assert not list(tmp_path.glob("*.partial")) and (tmp_path / "ck" / "checkpoint.pt").is_file()


def test_bench_json(tmp_path):
    done = sidlib("bench", "--dataset", "synthetic", "--depths", "1", "2", "--batch-size", "8", "--steps", "1",
                  "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    records = json.loads(done.stdout)
    assert len(records) == 4
    assert all(set(r) == {"model", "method", "depth", "parameters", "step_seconds", "peak_saved_bytes"} for r in records)


BAD = {
    "unknown method": (["--method", "magic"], "--method"),
    "unknown model": (["--model", "resnet"], "--model"),
    "unknown dataset": (["--dataset", "imagenet"], "--dataset"),
    "alpha zero": (["--alpha", "0"], "--alpha"),
    "alpha one": (["--alpha", "1"], "--alpha"),
    "depth zero": (["--depth", "0"], "--depth"),
    "epochs zero": (["--epochs", "0"], "--epochs"),
    "batch zero": (["--batch-size", "0"], "--batch-size"),
    "lr zero": (["--lr", "0"], "--lr"),
    "lr negative": (["--lr", "-1e-3"], "--lr"),
    "smoothing one": (["--label-smoothing", "1"], "--label-smoothing"),
    "smoothing negative": (["--label-smoothing", "-0.1"], "--label-smoothing"),
    "noise one": (["--label-noise", "1.0"], "--label-noise"),
    "noise negative": (["--label-noise", "-0.2"], "--label-noise"),
    "subset zero": (["--train-subset", "0"], "--train-subset"),
    "subset too big": (["--train-subset", "2001"], "--train-subset"),
    "not a number": (["--lr", "fast"], "--lr"),
    "test subset too big": (["--test-subset", "501"], "--test-subset"),
    "sid on a linear head": (["--method", "sid", "--model", "vgg11"], "--head cascade"),
    "image model on 1-D data": (["--model", "resnet18", "--dataset", "mnist1d"], "--model resnet18"),
    "simplecnn has no linear head": (["--head", "linear"], "no linear head"),
    "unknown head": (["--head", "mlp"], "--head"),
    "weight decay negative": (["--weight-decay", "-0.1"], "--weight-decay"),
    "unknown optimizer": (["--optimizer", "lion"], "--optimizer"),
    "dfa on a cascade": (["--method", "dfa"], "--model mlp-2x800"),
    "dfa on a backbone's cascade": (["--method", "dfa", "--model", "vgg11", "--head", "cascade"], "--head linear"),
    "noprop on a linear head": (["--method", "noprop", "--model", "mlp-2x800"], "--head cascade"),
    "noprop on a stack": (["--method", "noprop", "--model", "deep-mlp"], "--model simplecnn"),
    "unknown noprop variant": (["--method", "noprop", "--noprop-variant", "simple"], "--noprop-variant"),
    "unknown ff goodness": (["--method", "ff", "--model", "mlp-2x800", "--ff-goodness", "max"], "--ff-goodness"),
    "unknown pepita sign": (["--method", "pepita", "--model", "mlp-2x800", "--pepita-sign", "zero"], "--pepita-sign"),
    "unknown belief input": (["--belief-input", "sigmoid"], "--belief-input"),
    "belief input on a linear head": (["--model", "mlp-2x800", "--method", "bp", "--belief-input", "logits"], "--belief-input"),
    "validation split negative": (["--val-split", "-1"], "--val-split"),
    "validation split is the whole set": (["--val-split", "2000"], "--val-split"),
    "validation and subset exceed the set": (["--val-split", "1000", "--train-subset", "1500"], "--val-split 1000"),
    "reported test epochs without validation": (["--test-epochs", "reported"], "--val-split"),
    "belief input for noprop": (["--method", "noprop", "--belief-input", "residual"], "--belief-input"),
    "reverse kl to a one-hot target": (["--method", "sid", "--kl", "reverse"], "--label-smoothing"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_option_is_one_line_exit_2_nothing_written(tmp_path, case):
    extra, named = BAD[case]
    out = tmp_path / "out.json"
    done = sidlib(*TRAIN, *extra, "--out", str(out), "--checkpoint-dir", str(tmp_path / "ck"), cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and "Traceback" not in done.stderr, done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written, not even the checkpoint folder


def expect_one_line_exit_2(done, *words):
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_dataset_unavailable_offline(tmp_path):
    done = sidlib(*TRAIN, "--dataset", "cifar10", "--data-root", str(tmp_path / "empty"), "--out",
                  str(tmp_path / "o.json"), cwd=tmp_path)
    expect_one_line_exit_2(done, "cifar10", "not available", str(tmp_path / "empty"))
    assert not (tmp_path / "o.json").exists()


def test_cuda_when_there_is_none(tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    expect_one_line_exit_2(sidlib(*TRAIN[:-2], "--device", "cuda", cwd=tmp_path), "--device cuda", "CUDA")


@pytest.mark.parametrize("where", ["missing-dir/out.json", "a-file/out.json", "."])
def test_unwritable_out(tmp_path, where):
    (tmp_path / "a-file").write_text("x")
    done = sidlib(*TRAIN, "--out", str(tmp_path / where), cwd=tmp_path)
    expect_one_line_exit_2(done, "--out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_resume_without_checkpoint(tmp_path):
    expect_one_line_exit_2(sidlib(*TRAIN, "--resume", "--checkpoint-dir", str(tmp_path / "none"), cwd=tmp_path),
                           "--resume", "no checkpoint")
    expect_one_line_exit_2(sidlib(*TRAIN, "--resume", cwd=tmp_path), "--resume", "--checkpoint-dir")
    assert list(tmp_path.iterdir()) == []


def test_bench_times_the_batched_sid_step_beside_the_per_module_one(tmp_path):
    done = sidlib("bench", "--dataset", "synthetic", "--depths", "3", "--methods", "sid", "sid-batched", "bp",
                  "--batch-size", "8", "--steps", "1", "--warmup", "0", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    records = {r["method"]: r for r in json.loads(done.stdout)}
    assert set(records) == {"sid", "sid-batched", "bp"}
    assert records["sid-batched"]["parameters"] == records["sid"]["parameters"] and records["sid-batched"]["step_seconds"] > 0
