"""Module-parallel SID across processes, with ``torch.distributed`` (gloo on CPUs, NCCL on GPUs).

    torchrun --nproc-per-node 2 -m sidlib train --method sid --depth 32 ...

``torchrun`` starts one process per rank and sets ``WORLD_SIZE``; ``sidlib train`` then joins the
process group (``init_from_environment``) and every rank runs the one training loop on the same
batches (same seed, same data). Rank r owns a contiguous range of the L refinement modules
(``owned_modules``). One SID step is then

    1. every rank computes the features h of the batch with its replica of the extractor;
    2. teacher pass, a pipeline: rank r receives the logits of the module before its first from rank
       r - 1, runs its own modules without gradients, and sends its last module's logits to rank r + 1
       (``pipelined_teacher_logits``);
    3. phase 2 on every rank at once: each module's local loss against its cached teacher, for the
       rank's own modules only;
    4. the modules' gradients with respect to h are summed across ranks (one all-reduce of a (B, d)
       tensor); each rank backpropagates the sum through its extractor replica. The extractor's
       backward is linear in that incoming gradient, so this is the all-reduce of the extractor's
       gradient, at the cost of one (B, d) tensor instead of all its parameters;
    5. one optimiser step: the extractor's update is the same on every rank; a rank's modules are the
       only ones with gradients there, and Adam leaves parameters without a gradient untouched.

At each epoch's end every module's parameters and optimiser state are broadcast from their owner
(``share_modules``), so that every rank holds the whole trained network to evaluate and checkpoint,
and a checkpoint resumes in one process or in many. The extractor's forward and backward run on
every rank, so the speed-up is bounded by the modules' share of a step (notebook 05 measures both).
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def active() -> bool:
    """True inside a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def init_from_environment(device: torch.device) -> bool:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1); return whether one was joined."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return active()
    if device.type == "cuda":  # one GPU per rank
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def leave() -> None:
    dist.destroy_process_group()


def owned_modules(depth: int, rank: int, world: int) -> range:
    """The contiguous modules of ``rank``: as equal a share of ``depth`` as possible, earlier ranks
    taking one more when it does not divide."""
    if world > depth:
        raise ValueError(f"{world} ranks for {depth} modules: every rank needs a module; "
                         f"use at most {depth} processes (--nproc-per-node) or a deeper cascade")
    share, extra = divmod(depth, world)
    start = rank * share + min(rank, extra)
    return range(start, start + share + (rank < extra))


def my_modules(depth: int) -> range:
    """This process's modules: all of them outside a process group."""
    if not active():
        return range(depth)
    return owned_modules(depth, dist.get_rank(), dist.get_world_size())


@torch.no_grad()
def pipelined_teacher_logits(model, features, modules: range) -> list[torch.Tensor]:
    """Phase 1 for ``modules`` (this rank's): the logits of the teachers p_{i-1} of each module i in
    ``modules``, the first received from the previous rank (p_0, zero logits, on rank 0)."""
    logits = features.new_zeros(features.shape[0], model.num_classes)  # as ``sid.teacher_logits`` starts
    me, world = dist.get_rank(), dist.get_world_size()
    if me > 0:
        dist.recv(logits, src=me - 1)
    teachers = []
    for i in modules:
        teachers.append(logits)
        logits = model.module_logits(i, model.module_input(logits), features)
    if me < world - 1:  # in the features' dtype, the receiver's buffer (logits have it, also under autocast)
        dist.send(logits.to(features.dtype).contiguous(), dst=me + 1)
    return teachers


def sum_feature_gradients(gradient: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of the modules' gradients with respect to h (a rank whose modules sent none
    to the extractor contributes zeros)."""
    total = gradient if gradient is not None else torch.zeros_like(like)
    dist.all_reduce(total)
    return total


def sum_over_ranks(value: torch.Tensor) -> torch.Tensor:
    total = value.detach().clone()
    dist.all_reduce(total)
    return total


def _broadcast(tensor: torch.Tensor, src: int) -> None:
    """``dist.broadcast`` in place, also for a CPU tensor (e.g. an optimiser's step count) under NCCL."""
    if dist.get_backend() == "nccl" and tensor.device.type == "cpu":
        on_device = tensor.cuda()
        dist.broadcast(on_device, src=src)
        tensor.copy_(on_device.cpu())
    else:
        dist.broadcast(tensor, src=src)


@torch.no_grad()
def share_modules(model, optimizer) -> None:
    """Broadcast each refinement module's parameters and optimiser state from the rank that owns it,
    so that every rank holds the whole network and the whole optimiser state."""
    world = dist.get_world_size()
    # all modules have the same shapes, so this rank's first module shows how the optimiser's state of
    # a module it does not own is laid out (Adam: step, exp_avg, exp_avg_sq; SGD: momentum_buffer)
    layout = [optimizer.state[p] for p in model.blocks[my_modules(model.depth)[0]].parameters()]
    for owner in range(world):
        for i in owned_modules(model.depth, owner, world):
            for parameter, template in zip(model.blocks[i].parameters(), layout):
                _broadcast(parameter.data, owner)
                state = optimizer.state[parameter]
                if not state:  # this rank never stepped the module: make room for the owner's state
                    state.update({key: torch.zeros_like(value) if torch.is_tensor(value) else value
                                  for key, value in template.items()})
                for key in sorted(state):
                    if torch.is_tensor(state[key]):
                        _broadcast(state[key], owner)


def _time_steps_main(argv: list[str]) -> None:
    """``torchrun ... -m sidlib.parallel CONFIG_JSON BATCH STEPS WARMUP OUT``: one rank of
    ``sidlib.bench.run_ranks``; rank 0 writes the step times (seconds, JSON) to OUT."""
    import json

    from .bench import time_steps_in_process_group
    from .config import TrainConfig
    from .io import write_json

    config_json, batch_size, steps, warmup, out = argv
    me = int(os.environ.get("RANK", "0"))
    times = time_steps_in_process_group(TrainConfig(**json.loads(config_json)).validate(), int(batch_size), int(steps),
                                        int(warmup))
    if me == 0:
        write_json(out, times)


if __name__ == "__main__":
    import sys

    _time_steps_main(sys.argv[1:])
