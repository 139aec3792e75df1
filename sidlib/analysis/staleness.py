"""Proposition 5 of the SID paper (its appendix D), measured: how wrong module i's gradient gets when
its teacher belief was computed with stale parameters of module i-1.

Module i (0-based index ``i >= 1`` into ``model.blocks``) trains on the local loss

    L_i(theta_i; t) = mean_n J_i(q_n; t_n),     q = softmax(f_i(softmax(t), h)),
    J_i = sid_objective(log q, log softmax(t), log p_y, alpha, direction)

where t = f_{i-1}(p_{i-2}, h; theta_{i-1}) are the teacher logits: the teacher is both the module's
input belief and the target of its consistency term, as in ``sidlib.methods.sid``. If the teacher
comes from theta_{i-1} + Delta instead of theta_{i-1}, the gradient is off by

    e(Delta) = || grad_{theta_i} L_i(theta_i; t(theta_{i-1} + Delta)) - grad_{theta_i} L_i(theta_i; t(theta_{i-1})) ||_2,

and Proposition 5 bounds it by C ||Delta||. Near Delta = 0, e(r u) = r ||J u|| + O(r^2) for a unit
direction u, where J = d grad_{theta_i} L_i / d theta_{i-1} (wherever the ReLUs of module i keep
their signs); the best constant for small perturbations is the spectral norm of J, found by Lanczos
iteration with forward- and reverse-mode derivatives (``gradient_sensitivity``).

The features h and the earlier beliefs p_{i-2} are held fixed: only module i-1 is stale, as in
the proposition. Everything runs in the model's dtype; use float64 to see errors of 1e-12.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import functional_call, grad, jvp, vjp

from ..divergences import sid_objective
from ..methods.sid import teacher_logits


@dataclass
class StalenessProblem:
    """Everything module i's local gradient depends on, besides the two modules' parameters."""
    model: torch.nn.Module
    index: int                 # i: the module whose gradient is examined (>= 1)
    features: Tensor           # h, detached
    previous_belief: Tensor    # p_{i-2}: module i-1's input belief, detached
    log_target: Tensor         # log p_y
    alpha: float
    direction: str             # "forward" or "reverse"

    @property
    def teacher_block(self) -> torch.nn.Module:
        return self.model.blocks[self.index - 1]

    @property
    def block(self) -> torch.nn.Module:
        return self.model.blocks[self.index]


def make_problem(model, index: int, features: Tensor, log_target: Tensor, alpha: float,
                 direction: str) -> StalenessProblem:
    """Module ``index``'s problem on a batch of features, p_{i-2} from the model's fresh cascade."""
    if not 1 <= index < model.depth:
        raise ValueError(f"module index must be in 1..{model.depth - 1} (module 0's teacher is the "
                         f"uniform p_0, which has no parameters), got {index}")
    features = features.detach()
    teachers = teacher_logits(model, features)  # logits of p_0 .. p_{L-1}; p_0's are zeros
    previous = torch.softmax(teachers[index - 1], dim=1)
    return StalenessProblem(model, index, features, previous, log_target, alpha, direction)


def parameters_of(module: torch.nn.Module) -> dict[str, Tensor]:
    return {name: p.detach() for name, p in module.named_parameters()}


def flatten(tensors: dict[str, Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors.values()])


def shifted(params: dict[str, Tensor], delta: dict[str, Tensor], scale: float = 1.0) -> dict[str, Tensor]:
    """theta + scale * Delta, name by name."""
    return {name: p + scale * delta[name] for name, p in params.items()}


def teacher_logits_with(problem: StalenessProblem, teacher_params: dict[str, Tensor]) -> Tensor:
    """t = f_{i-1}(p_{i-2}, h) computed with the given parameters of module i-1."""
    return functional_call(problem.teacher_block, teacher_params, (problem.previous_belief, problem.features))


def local_loss_with(problem: StalenessProblem, block_params: dict[str, Tensor], teacher: Tensor) -> Tensor:
    """L_i(theta_i; t): the batch mean of SID's local objective, teacher as input and as target."""
    logits = functional_call(problem.block, block_params, (torch.softmax(teacher, dim=1), problem.features))
    return sid_objective(torch.log_softmax(logits, dim=1), torch.log_softmax(teacher, dim=1), problem.log_target,
                         problem.alpha, problem.direction).mean()


def _block_gradient(problem: StalenessProblem, block_params: dict[str, Tensor], teacher: Tensor) -> Tensor:
    """grad_{theta_i} L_i(theta_i; t) at ``block_params``, flattened (differentiable in ``teacher``)."""
    return flatten(grad(lambda params: local_loss_with(problem, params, teacher))(block_params))


def local_gradient(problem: StalenessProblem, teacher_params: dict[str, Tensor]) -> Tensor:
    """grad_{theta_i} L_i(theta_i; t(teacher_params)), flattened in ``named_parameters`` order."""
    teacher = teacher_logits_with(problem, teacher_params).detach()
    return _block_gradient(problem, parameters_of(problem.block), teacher)


def gradient_error(problem: StalenessProblem, delta: dict[str, Tensor]) -> float:
    """e(Delta) = ||grad L_i with the teacher of theta_{i-1} + Delta  -  grad L_i with the fresh teacher||_2."""
    fresh = parameters_of(problem.teacher_block)
    return (local_gradient(problem, shifted(fresh, delta)) - local_gradient(problem, fresh)).norm().item()


def random_direction(module: torch.nn.Module, generator: torch.Generator) -> dict[str, Tensor]:
    """A direction in the module's parameter space, uniform on the unit sphere (all parameters together)."""
    raw = {name: torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
           for name, p in module.named_parameters()}
    norm = flatten(raw).norm()
    return {name: d / norm for name, d in raw.items()}


def error_curve(problem: StalenessProblem, direction: dict[str, Tensor], radii) -> Tensor:
    """e(r u) for each radius r along the unit direction u (float64 tensor of errors)."""
    return torch.tensor([gradient_error(problem, {n: r * d for n, d in direction.items()}) for r in radii],
                        dtype=torch.float64)


def _gradient_of_teacher_params(problem: StalenessProblem):
    """theta_{i-1} -> grad_{theta_i} L_i (flattened): the map whose Jacobian J Proposition 5 bounds."""
    block_params = parameters_of(problem.block)

    def gradient(teacher_params):
        return _block_gradient(problem, block_params, teacher_logits_with(problem, teacher_params))
    return gradient


@contextmanager
def _quiet_forward_mode():
    # torch builds its forward-mode decompositions with torch.jit.script on first use, which warns
    # that torch.jit.script is deprecated: torch's own business, not the caller's.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*is deprecated", category=FutureWarning)
        yield


def linearised_error(problem: StalenessProblem, direction: dict[str, Tensor]) -> float:
    """||J u||: the limit of e(r u) / r as r -> 0 (a forward-mode directional derivative)."""
    fresh = parameters_of(problem.teacher_block)
    with _quiet_forward_mode():
        _, tangent = jvp(_gradient_of_teacher_params(problem), (fresh,), (direction,))
    return tangent.norm().item()


def unflatten(vector: Tensor, like: dict[str, Tensor]) -> dict[str, Tensor]:
    out, start = {}, 0
    for name, t in like.items():
        out[name] = vector[start:start + t.numel()].view_as(t)
        start += t.numel()
    return out


def gradient_sensitivity(problem: StalenessProblem, iterations: int = 30,
                         generator: torch.Generator | None = None) -> tuple[float, dict[str, Tensor]]:
    """The spectral norm of J (max over unit u of ||J u||) and its direction: the smallest C for which
    e(Delta) <= C ||Delta|| + o(||Delta||) holds in every direction.

    Lanczos iteration on J^T J (one forward-mode and one reverse-mode derivative per step, full
    reorthogonalisation); its largest Ritz value converges much faster than the power method's.
    """
    fresh = parameters_of(problem.teacher_block)
    gradient = _gradient_of_teacher_params(problem)
    _, pullback = vjp(gradient, fresh)

    def normal_operator(vector: Tensor) -> Tensor:  # v -> J^T J v
        with _quiet_forward_mode():
            _, ju = jvp(gradient, (fresh,), (unflatten(vector, fresh),))
        return flatten(pullback(ju)[0])

    generator = generator or torch.Generator().manual_seed(0)
    start = flatten(random_direction(problem.teacher_block, generator))
    basis, diagonal, off_diagonal = [start], [], []
    for k in range(min(iterations, start.numel())):
        w = normal_operator(basis[k])
        diagonal.append(torch.dot(w, basis[k]))
        for b in basis:  # full reorthogonalisation: Krylov vectors lose orthogonality in floating point
            w = w - torch.dot(w, b) * b
        beta = w.norm()
        if beta <= 1e-12 * diagonal[0].abs():
            break
        off_diagonal.append(beta)
        basis.append(w / beta)
    size = len(diagonal)
    tridiagonal = torch.diag(torch.stack(diagonal))
    if size > 1:
        betas = torch.stack(off_diagonal[:size - 1])
        tridiagonal = tridiagonal + torch.diag(betas, 1) + torch.diag(betas, -1)
    values, vectors = torch.linalg.eigh(tridiagonal)
    top = torch.stack(basis[:size], dim=1) @ vectors[:, -1]
    top = top / top.norm()
    return values[-1].clamp(min=0).sqrt().item(), unflatten(top, fresh)


def eigen_residual(problem: StalenessProblem, direction: dict[str, Tensor], sigma: float) -> float:
    """||J^T J u - sigma^2 u|| / sigma^2: zero when u is a top singular direction with singular value
    sigma, i.e. when ``gradient_sensitivity`` has converged."""
    fresh = parameters_of(problem.teacher_block)
    gradient = _gradient_of_teacher_params(problem)
    with _quiet_forward_mode():
        _, ju = jvp(gradient, (fresh,), (direction,))
    (jtju,) = vjp(gradient, fresh)[1](ju)
    return ((flatten(jtju) - sigma ** 2 * flatten(direction)).norm() / sigma ** 2).item()


def relu_sign_flips(problem: StalenessProblem, delta: dict[str, Tensor]) -> int:
    """How many (sample, hidden unit) pre-activations of module i change sign when its teacher goes
    stale by Delta: where the gradient map is not differentiable, and the linear bound can jump."""
    fresh = parameters_of(problem.teacher_block)
    signs = []
    for params in (fresh, shifted(fresh, delta)):
        belief = torch.softmax(teacher_logits_with(problem, params), dim=1)
        pre = problem.block.hidden(torch.cat([belief, problem.features], dim=1))
        signs.append(pre > 0)
    return int((signs[0] != signs[1]).sum().item())


def loglog_slope(radii, errors) -> float:
    """Least-squares slope of log(error) against log(r): 1 where e grows linearly."""
    x = torch.log(torch.as_tensor(radii, dtype=torch.float64))
    y = torch.log(torch.as_tensor(errors, dtype=torch.float64))
    x, y = x - x.mean(), y - y.mean()
    return ((x * y).sum() / (x * x).sum()).item()


def first_flip_radius(problem: StalenessProblem, direction: dict[str, Tensor], low: float, high: float,
                      steps: int = 60) -> float:
    """The smallest r in [low, high] (to bisection accuracy) at which some ReLU of module i changes sign
    along r u, assuming none has at ``low`` and some have at ``high``."""
    scaled = lambda r: {name: r * d for name, d in direction.items()}  # noqa: E731
    if relu_sign_flips(problem, scaled(low)) or not relu_sign_flips(problem, scaled(high)):
        raise ValueError(f"need no sign change at r = {low} and one at r = {high}")
    for _ in range(steps):
        middle = (low * high) ** 0.5 if high / low > 2 else (low + high) / 2
        if relu_sign_flips(problem, scaled(middle)):
            high = middle
        else:
            low = middle
    return high


def train_sid_briefly(model, data, steps: int, batch_size: int, config, optimizer=None,
                      generator: torch.Generator | None = None):
    """``steps`` SID steps (``sidlib.methods.sid.step`` and the training loop's Adam) on random training
    batches, so that the beliefs examined are those of a network that has learnt something. Pass the
    returned optimizer back in to continue the same run. Returns (summed local losses, optimizer)."""
    import contextlib

    from ..methods import sid
    from ..train import make_optimizer

    generator = generator or torch.Generator().manual_seed(0)
    optimizer = optimizer or make_optimizer(model, config.lr)
    losses = []
    for _ in range(steps):
        batch = torch.randint(0, len(data.train_labels), (batch_size,), generator=generator)
        loss = sid.step(model, data.prepare(data.train_images[batch]), data.train_labels[batch], config,
                        contextlib.nullcontext)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses, optimizer
