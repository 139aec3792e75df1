"""Training methods by name: one file per method, each a module with this protocol.

Must define
    step(model, images, labels, config, autocast, clock=untimed) -> loss
        leave one minibatch's gradients in ``.grad`` and return the detached loss; the training
        loop (``sidlib.train``) then takes the optimiser step. ``clock`` marks the step's stages
        (``sidlib.methods.stages``), so bench and profiling time the method through its own code.
May define
    HEADS = ("linear", "cascade")     the model structures it can train (default: both)
    prepare(model, config)            attach what the method needs before the optimiser is built:
                                      projection heads, feedback matrices, label embeddings, as
                                      submodules or buffers (so they are saved, moved and, if they
                                      are parameters, trained)
    predict(model, images) -> logits  its inference rule, if not ``model(images)``
    check(config)                     raise ValueError naming a ``--<method>-*`` option that cannot work
                                      and the fix (``TrainConfig.validate`` turns it into a one-line error)
    DESCRIPTION                       one line for ``--help``

``METHODS[name]`` is a ``Method`` with the optional parts filled in by their defaults.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Callable

from ..models import HEADS as ALL_HEADS
from . import bp, dfa, dkp, fa, ff, hsic, lls, noprop, pepita, sid, sll
from .stages import untimed  # noqa: F401 (re-exported: the clock of an untimed step)


def _no_preparation(model, config) -> None:
    return None


def _forward(model, images):
    return model(images)


def _no_check(config) -> None:
    return None


@dataclass(frozen=True)
class Method:
    name: str
    step: Callable
    prepare: Callable = _no_preparation
    predict: Callable = _forward
    heads: tuple[str, ...] = ALL_HEADS
    description: str = ""
    check: Callable = _no_check

    @classmethod
    def from_module(cls, name: str, module: ModuleType) -> "Method":
        return cls(name=name, step=module.step, prepare=getattr(module, "prepare", _no_preparation),
                   predict=getattr(module, "predict", _forward), heads=getattr(module, "HEADS", ALL_HEADS),
                   description=getattr(module, "DESCRIPTION", ""), check=getattr(module, "check", _no_check))


# the papers' methods first, then the baselines in the order of the issue that asked for them
_MODULES = {"bp": bp, "sid": sid, "sll": sll, "fa": fa, "dfa": dfa, "dkp": dkp, "pepita": pepita, "ff": ff,
            "noprop": noprop, "hsic": hsic, "lls": lls}
METHODS = {name: Method.from_module(name, module) for name, module in _MODULES.items()}
