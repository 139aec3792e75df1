"""Module-parallel SID (sidlib.parallel): 2 ranks under torchrun train the network one process trains."""
import os
import subprocess
import sys

import contextlib
import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sidlib import parallel
from sidlib.config import TrainConfig
from sidlib.methods import sid
from sidlib.models import build_model
from sidlib.parallel import owned_modules
from sidlib.train import CHECKPOINT_NAME, make_optimizer

# 4 steps an epoch for 2 epochs: the second epoch starts from modules shared across ranks. SGD, because
# Adam turns float32's rounding differences in near-zero gradients into steps of the learning rate's
# size within a few steps (Adam is checked in float64 below instead).
RUN = ["--dataset", "synthetic", "--method", "sid", "--train-subset", "256", "--test-subset", "128",
       "--batch-size", "64", "--epochs", "2", "--optimizer", "sgd", "--lr", "0.05", "--no-progress"]


def launch(processes, options, checkpoint_dir, tmp_path):
    """``torchrun --nproc-per-node processes -m sidlib train`` (one thread per rank); its completed process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
               "--master-port", str(29500 + os.getpid() % 1000), "-m", "sidlib", "train", *RUN, *options,
               "--checkpoint-dir", str(checkpoint_dir)]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)


def test_every_module_has_one_owner_in_contiguous_balanced_ranges():
    for depth in (2, 5, 10, 32):
        for world in range(1, min(depth, 4) + 1):
            ranges = [owned_modules(depth, r, world) for r in range(world)]
            assert [i for r in ranges for i in r] == list(range(depth))
            assert max(map(len, ranges)) - min(map(len, ranges)) <= 1
    with pytest.raises(ValueError, match="every rank needs a module"):
        owned_modules(2, 0, 3)


@pytest.mark.parametrize("options", [["--depth", "4"],
                                     ["--depth", "5", "--belief-input", "residual", "--extractor", "final_layer"]],
                         ids=["paper-cascade", "residual-final-layer-uneven"])
def test_two_ranks_train_the_same_network_as_one_process(tmp_path, options):
    """After 8 steps the 2-rank run's parameters and momentum equal the 1-rank run's to float32
    tolerance (they differ only in the order the modules' feature gradients are summed)."""
    states = {}
    for processes in (1, 2):
        done = launch(processes, options, tmp_path / f"ranks{processes}", tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.count("final test accuracy") == 1  # rank 0 alone reports
        states[processes] = torch.load(tmp_path / f"ranks{processes}" / CHECKPOINT_NAME, weights_only=False)
    one, two = states[1], states[2]
    assert one["model"].keys() == two["model"].keys()
    for name, tensor in one["model"].items():
        torch.testing.assert_close(two["model"][name], tensor, rtol=1e-5, atol=1e-7, msg=lambda detail, name=name: f"{name}: {detail}")
    assert len(one["optimizer"]["state"]) == len(two["optimizer"]["state"]) == len(one["model"])
    for index, state in one["optimizer"]["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(two["optimizer"]["state"][index][key], value, rtol=1e-5, atol=1e-7)


def test_module_parallel_runs_refuse_what_they_cannot_do_in_one_line(tmp_path):
    done = launch(2, ["--depth", "4", "--method", "bp"], tmp_path / "bp", tmp_path)
    assert done.returncode != 0
    # each rank's one line comes first; torchrun then adds its own report of the failed ranks
    assert done.stderr.splitlines()[0].startswith("sidlib: error: 2 processes: only SID trains module-parallel")
    assert not (tmp_path / "bp" / CHECKPOINT_NAME).exists()


def adam_steps_in_float64(rank, world, store, out, options, steps=5):
    """``steps`` SID steps with Adam on a float64 cascade, on ``world`` gloo ranks; rank 0 saves the result."""
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", store=dist.FileStore(store, world), rank=rank, world_size=world)
    config = TrainConfig(method="sid", dataset="synthetic", **options).validate()
    torch.manual_seed(0)
    model = build_model(config.model, (1, 12, 12), 10, config.depth, "cascade", belief_input=config.belief_input).double()
    optimizer = make_optimizer(model, 1e-2)
    batches = torch.Generator().manual_seed(1)
    for _ in range(steps):
        images = torch.randn(32, 1, 12, 12, generator=batches, dtype=torch.float64)
        labels = torch.randint(0, 10, (32,), generator=batches)
        sid.step(model, images, labels, config, contextlib.nullcontext)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if world > 1:
        parallel.share_modules(model, optimizer)
    if rank == 0:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, out)
    if world > 1:
        parallel.leave()


@pytest.mark.parametrize("options", [{"depth": 3}, {"depth": 4, "kl": "reverse", "label_smoothing": 0.1, "extractor": "frozen"}],
                         ids=["uneven", "reverse-kl-frozen"])
def test_module_parallel_adam_steps_equal_one_process_in_float64(tmp_path, options):
    """The step itself: the pipelined teacher pass, per-rank phase 2, summed feature gradients and the
    shared Adam state give one process's parameters to float64 rounding."""
    for world in (1, 2):
        mp.spawn(adam_steps_in_float64, args=(world, str(tmp_path / f"store{world}"), tmp_path / f"ranks{world}.pt",
                                              options), nprocs=world)
    one, two = (torch.load(tmp_path / f"ranks{w}.pt", weights_only=False) for w in (1, 2))
    for name, tensor in one["model"].items():
        torch.testing.assert_close(two["model"][name], tensor, rtol=1e-9, atol=1e-12, msg=lambda detail, name=name: f"{name}: {detail}")
    for index, state in one["optimizer"]["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(two["optimizer"]["state"][index][key], value, rtol=1e-9, atol=1e-15)


def test_bench_times_module_parallel_sid_beside_bp_and_the_projection(tmp_path):
    out = tmp_path / "ranks.json"
    done = subprocess.run([sys.executable, "-m", "sidlib", "bench", "--dataset", "synthetic", "--depths", "2", "--ranks", "1", "2",
                           "--rounds", "1", "--steps", "1", "--warmup", "0", "--batch-size", "8", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    records = json.loads(out.read_text())["records"]
    assert [(r["depth"], r["processes"]) for r in records] == [(2, 1), (2, 2)]
    assert records[0]["speedup_over_one_process"] == 1.0
    assert records[0]["projected_speedup_over_one_process"] == {"modules": 1.0, "extractor": 1.0}
    for r in records:
        assert r["step_seconds"] > 0 and r["bp_step_seconds"] > 0
        assert r["speedup_over_bp"] == pytest.approx(r["bp_step_seconds"] / r["step_seconds"])
        # with one device per module the modules-only projection can only gain on one device's
        assert r["projected_speedup_over_one_process"]["modules"] >= r["projected_speedup_over_one_process"]["extractor"] >= 1.0


def test_bench_refuses_ranks_it_cannot_time_in_one_line():
    done = subprocess.run([sys.executable, "-m", "sidlib", "bench", "--dataset", "synthetic", "--depths", "2", "--ranks", "3"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "--ranks" in done.stderr, done.stderr
