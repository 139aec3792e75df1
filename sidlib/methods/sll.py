"""Stochastic Layer-wise Learning (Yin & Corradi 2025), reconstructed: no code of the paper is public.

The network's blocks are grouped into units (one block each for SLL; several for SLL+, the paper's
variant for vision transformers). Unit l reads its parent's output detached, so no gradient
crosses from one unit to another, and carries a fixed random projection R_l (k x d_l, sampled
once, never trained) that turns its output h_l into a categorical over k codes,

    q_l = softmax(R_l s(h_l) / temperature)                                 (``code_log_probs``)

where s flattens the output (or takes a transformer's class token or token mean) and R_l has its
entries dropped out during training (multiplicative dropout on the weights, a fresh mask each step).
Each unit minimises, on its own graph, which is freed as soon as its loss is backpropagated,

    J_l = -log q_l(y) + weight * D_B(q_l, sg(q_{l-1}))                      (``sll_objective``)

with D_B = -log sum_k sqrt(q_l[k] q_{l-1}[k]) the Bhattacharyya distance
(``sidlib.divergences.bhattacharyya_distance``) and sg the stop-gradient: the parent's categorical is
the one it computed in its own step. The model's head (its reduction, e.g. a ViT's LayerNorm and
class token, and its Linear classifier) is the final layer, trained the same way on the last unit's
detached output; its logits are already a categorical over the classes, so it needs no projection.
The loss a step returns (the run's ``train_loss``) is the sum of all these local losses, so it is
not comparable with BP's cross-entropy.

What the paper leaves open is an option here (``SLLOptions``), recorded in every run's config:
the distribution of R_l (entries of variance 1/d_l, so that R_l h has the scale of h's RMS; the
temperature rescales all layers alike: the JL scaling 1/k of one layer would be tau = sqrt(k / d_l)),
the dropout rate (applied to the input's projection too, which gives the first prior), the
temperature, the weight of D_B, the first unit's prior (a projection of the input, the parent of
unit 1; uniform; or none), how k > C codes give a class probability (code j belongs to class j mod
C and a class has the summed probability of its codes; or only the first C codes count), the
prediction rule (the trained head; the last unit's projection; the average of all their class
probabilities), the blocks per unit and the token summary of a transformer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..divergences import bhattacharyya_distance
from .stages import untimed

HEADS = ("linear",)  # SLL trains a network's blocks and its classifier, not a belief cascade
DESCRIPTION = "each block (or unit of blocks) trained alone against a fixed random projection (SLL, reconstructed)"
PROJECTIONS = ("gaussian", "rademacher")
FIRST_PRIORS = ("input", "uniform", "none")
CODE_MAPS = ("pooled", "first")
PREDICTION_RULES = ("head", "last", "average")
TOKEN_SUMMARIES = ("cls", "mean")


@dataclass(frozen=True)
class SLLOptions:
    """SLL's open choices (each a ``--sll-*`` option of ``python -m sidlib train``)."""
    codes: int | None = None         # k, the projection's output dimension; None: the number of classes (the paper)
    dropout: float = 0.1             # rate of the multiplicative dropout on R's entries
    temperature: float = 1.0
    weight: float = 1.0              # of the D_B term (the paper writes none)
    first_prior: str = "input"       # the parent categorical of unit 1
    code_map: str = "pooled"         # how k > C codes give class probabilities
    predict: str = "head"            # the inference rule
    unit: int = 1                    # blocks per unit: 1 is SLL, more is SLL+
    tokens: str = "cls"              # a transformer's summary: its class token or its token mean
    projection: str = "gaussian"     # distribution of R's entries, variance 1/d

    @classmethod
    def from_config(cls, config) -> "SLLOptions":
        return cls(**{f.name: getattr(config, f"sll_{f.name}") for f in fields(cls)})

    def check(self, num_classes: int | None = None) -> None:
        """Raise ValueError naming the ``--sll-*`` option that cannot work, and the fix."""
        choices = {"first_prior": FIRST_PRIORS, "code_map": CODE_MAPS, "predict": PREDICTION_RULES,
                   "tokens": TOKEN_SUMMARIES, "projection": PROJECTIONS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"unknown --sll-{name.replace('_', '-')} {getattr(self, name)!r}; "
                                 f"choose one of: {', '.join(allowed)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"--sll-dropout must lie in [0, 1), got {self.dropout}; 0 turns the dropout off")
        if not self.temperature > 0:
            raise ValueError(f"--sll-temperature must be positive, got {self.temperature}; 1 leaves the logits as they are")
        if not self.weight >= 0:
            raise ValueError(f"--sll-weight must be at least 0, got {self.weight}; 0 drops the Bhattacharyya term")
        if self.unit < 1:
            raise ValueError(f"--sll-unit (blocks per unit) must be at least 1, got {self.unit}; 1 is plain SLL")
        if self.codes is not None and num_classes is not None and self.codes < num_classes:
            raise ValueError(f"--sll-codes {self.codes} is below the {num_classes} classes, which would leave "
                             f"classes without a code; use at least {num_classes}, or leave it unset (= classes)")


class RandomProjection(nn.Module):
    """A fixed k x d matrix R with i.i.d. entries of mean 0 and variance 1/d (a buffer: saved, moved,
    never trained). In training mode each forward drops its entries at rate ``dropout`` and rescales
    the rest by 1 / (1 - dropout), as dropout on weights does."""

    def __init__(self, in_features: int, codes: int, distribution: str = "gaussian", dropout: float = 0.0):
        super().__init__()
        if distribution == "gaussian":
            weight = torch.randn(codes, in_features)
        elif distribution == "rademacher":
            weight = torch.randint(0, 2, (codes, in_features)).float() * 2 - 1
        else:
            raise ValueError(f"unknown projection {distribution!r}; choose from {', '.join(PROJECTIONS)}")
        self.register_buffer("weight", weight / math.sqrt(in_features))
        self.dropout = dropout

    def forward(self, h: Tensor) -> Tensor:
        """R h in float32, whatever the autocast (a bf16 projection of a 12,544-wide output loses digits)."""
        with torch.autocast(h.device.type, enabled=False):
            weight = F.dropout(self.weight, self.dropout, self.training) if self.dropout else self.weight
            return F.linear(h.float(), weight.float())

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[1]}, codes={self.weight.shape[0]}, dropout={self.dropout}"


def unit_slices(num_blocks: int, blocks_per_unit: int) -> list[tuple[int, int]]:
    """(start, stop) of each unit: consecutive blocks, the last unit taking what is left."""
    return [(start, min(start + blocks_per_unit, num_blocks)) for start in range(0, num_blocks, blocks_per_unit)]


def units(model, slices: list[tuple[int, int]]) -> list[nn.Sequential]:
    return [nn.Sequential(*model.blocks[start:stop]) for start, stop in slices]


def summary_vector(h: Tensor, is_tokens: bool, tokens: str = "cls") -> Tensor:
    """What a unit's output is projected from: a transformer's tokens (N, T, D) give their class token
    or their mean; anything else is flattened."""
    if is_tokens:
        return h[:, 0] if tokens == "cls" else h.mean(1)
    return h.flatten(1)


class LocalHeads(nn.Module):
    """What ``prepare`` attaches to a network as ``model.sll``: the units' projections, the input's
    projection (the first unit's prior), and the options that the step and the prediction rule read."""

    def __init__(self, model, options: SLLOptions, unit_dims: list[int], input_dim: int):
        super().__init__()
        self.options = options
        self.num_classes = model.num_classes
        self.codes = options.codes or model.num_classes
        self.unit_slices = unit_slices(len(model.blocks), options.unit)
        make = lambda d: RandomProjection(d, self.codes, options.projection, options.dropout)  # noqa: E731
        self.projections = nn.ModuleList(make(d) for d in unit_dims)
        self.input_projection = make(input_dim) if options.first_prior == "input" else None

    def units(self, model) -> list[nn.Sequential]:
        return units(model, self.unit_slices)

    def code_log_probs(self, projection: RandomProjection, h: Tensor, is_tokens: bool) -> Tensor:
        """log q = log_softmax(R s(h) / temperature), in float32 whatever the autocast."""
        vector = summary_vector(h, is_tokens, self.options.tokens)
        return torch.log_softmax(projection(vector).float() / self.options.temperature, dim=1)

    def first_prior(self, images: Tensor) -> Tensor | None:
        """log q_0, the parent categorical of unit 1 (detached), or None for no D_B term there."""
        if self.options.first_prior == "none":
            return None
        if self.options.first_prior == "uniform":
            return images.new_full((images.shape[0], self.codes), -math.log(self.codes), dtype=torch.float32)
        with torch.no_grad():
            return self.code_log_probs(self.input_projection, images, is_tokens=False)

    def class_log_probs(self, code_log_probs: Tensor) -> Tensor:
        return class_log_probs(code_log_probs, self.num_classes, self.options.code_map)


def class_log_probs(code_log_probs: Tensor, num_classes: int, code_map: str = "pooled") -> Tensor:
    """log p(class) from a categorical over k >= C codes.

    ``pooled``: code j belongs to class j mod C, and a class has the summed probability of its codes;
    ``first``: only the first C codes count, renormalised. With k = C both are the identity.
    """
    codes = code_log_probs.shape[-1]
    if codes == num_classes:
        return code_log_probs
    if code_map == "first":
        return torch.log_softmax(code_log_probs[..., :num_classes], dim=-1)
    groups = -(-codes // num_classes)  # pad with zero-probability codes to a multiple of C
    padded = F.pad(code_log_probs, (0, groups * num_classes - codes), value=-math.inf)
    return torch.logsumexp(padded.unflatten(-1, (groups, num_classes)), dim=-2)


def sll_objective(log_q: Tensor, log_parent: Tensor | None, labels: Tensor, weight: float, num_classes: int,
                  code_map: str = "pooled") -> Tensor:
    """J = -log q(y) + weight * D_B(q, parent) for each row; q and the parent over the same k codes
    (their log-probabilities), the label's probability through ``class_log_probs``. No parent
    (``None``): the predictive term alone."""
    predictive = -class_log_probs(log_q, num_classes, code_map).gather(1, labels[:, None]).squeeze(1)
    if log_parent is None or weight == 0:
        return predictive
    return predictive + weight * bhattacharyya_distance(log_q, log_parent)


def _is_tokens(model, h: Tensor) -> bool:
    # A transformer's blocks output (N, tokens, width); convolutional ones (N, C, H, W) or (N, C, L).
    return h.dim() == 3 and len(model.input_shape) == 3


@torch.no_grad()
def _unit_output_dims(model, options: SLLOptions) -> list[int]:
    was_training = model.training
    model.eval()  # batch norm on 2 samples; no dropout
    h = torch.zeros(2, *model.input_shape, device=next(model.parameters()).device)
    dims = []
    for unit in units(model, unit_slices(len(model.blocks), options.unit)):
        h = unit(h)
        dims.append(summary_vector(h, _is_tokens(model, h), options.tokens).shape[1])
    model.train(was_training)
    return dims


def prepare(model, config) -> None:
    """Attach ``model.sll``: one fixed random projection per unit (and one for the input when it is
    the first unit's prior), sampled on the CPU from the global generator, so the run's seed fixes
    them whatever the device, then moved to the model's device."""
    options = SLLOptions.from_config(config)
    options.check(model.num_classes)
    dims = _unit_output_dims(model, options)
    model.sll = LocalHeads(model, options, dims, math.prod(model.input_shape)).to(next(model.parameters()).device)


def step(model, images, labels, config, autocast, clock=untimed):
    """Each unit's local loss, backpropagated at once on its own graph; then the head's. Returns
    their sum (detached). The parent of each unit is the categorical the unit before it computed."""
    heads: LocalHeads = model.sll
    options = heads.options
    with clock("first_prior"):
        parent = heads.first_prior(images)
    x, losses = images, []
    for i, (unit, projection) in enumerate(zip(heads.units(model), heads.projections)):
        with clock("unit_forward", i):
            with autocast():
                h = unit(x)
            log_q = heads.code_log_probs(projection, h, _is_tokens(model, h))
            loss = sll_objective(log_q, parent, labels, options.weight, heads.num_classes, options.code_map).mean()
        with clock("unit_backward", i):
            loss.backward()  # frees this unit's graph before the next unit runs
        losses.append(loss.detach())
        x, parent = h.detach(), log_q.detach()
    with clock("head_forward"):
        with autocast():
            logits = model.head(x)
        log_q = torch.log_softmax(logits.float(), dim=1)
        parent = heads.class_log_probs(parent)
        loss = sll_objective(log_q, parent, labels, options.weight, heads.num_classes).mean()
    with clock("head_backward"):
        loss.backward()
    losses.append(loss.detach())
    return torch.stack(losses).sum()


def layer_class_log_probs(model, images: Tensor) -> list[Tensor]:
    """log p(class) of every unit's projection, then of the head, in the current mode (use eval mode
    for the deterministic projections, no dropout)."""
    heads: LocalHeads = model.sll
    out, h = [], images
    for unit, projection in zip(heads.units(model), heads.projections):
        h = unit(h)
        out.append(heads.class_log_probs(heads.code_log_probs(projection, h, _is_tokens(model, h))))
    out.append(torch.log_softmax(model.head(h).float(), dim=1))
    return out


def predict(model, images: Tensor) -> Tensor:
    """Logits by the run's rule: the head's; the last unit's projection's class log-probabilities;
    or the log of the mean class probability over every unit's projection and the head."""
    rule = model.sll.options.predict
    if rule == "head":
        return model(images)
    per_layer = layer_class_log_probs(model, images)
    if rule == "last":
        return per_layer[-2]
    return torch.logsumexp(torch.stack(per_layer), dim=0) - math.log(len(per_layer))
