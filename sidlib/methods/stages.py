"""The stages of a training step, marked so that they can be timed where they run.

A method's ``step`` takes ``clock`` and wraps each stage of its work in ``with clock(stage, index)``
(``index`` numbers a repeated stage, e.g. module i). During training ``clock`` is ``untimed``, which
does nothing; ``sidlib.bench.StageClock`` times each stage instead, which is how the Proposition 3
profiling (``sidlib.analysis.profiling``) measures a method through its own step.
Stage names shared by the methods of a belief cascade: ``extractor_forward``, ``teacher_pass`` (SID),
``module_forward`` i, ``module_backward`` i, ``extractor_backward``; SID's batched phase 2 is one
stage, ``modules_batched``.
"""
from contextlib import nullcontext


def untimed(stage: str, index: int | None = None):
    return nullcontext()
