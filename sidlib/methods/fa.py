"""Feedback alignment (Lillicrap, Cownden, Tweed & Akerman 2016): errors travel backward through
fixed random matrices instead of the transposed forward weights.

For a layer a_l = W_l h_{l-1} + b_l (a linear map or a convolution), backpropagation sends the error
delta_l = dL/da_l to the layer's input through W_l itself; FA sends it through a fixed random B_l of
W_l's shape (the paper's B_l is our B_l^T: it writes delta_{l-1} = B_l delta_l for column vectors):

    dL/dh_{l-1}  ~  delta_l B_l              (a convolution: the transposed convolution with B_l)
    dW_l = delta_l^T h_{l-1},   db_l = sum over the batch (and positions) of delta_l      as in BP

Everything between these layers (ReLU, pooling, batch norm, softmax, concatenation) backpropagates
exactly, so the error reaching a layer is BP's computed with every B_l in place of W_l above it.
With B_l = W_l FA is BP. The last layer's weight gradient is always BP's: its delta is dL/dlogits.

How: ``prepare`` turns every ``nn.Linear``, ``nn.Conv1d`` and ``nn.Conv2d`` of the model, in place,
into its feedback version (same class underneath, same weight and bias Parameters, plus a buffer
``feedback`` = B_l), whose forward is an ``autograd.Function``: the usual F.linear / convolution
forward, a backward that computes the input's gradient with B_l (``linear_with_feedback``,
``conv_with_feedback``). The step is BP's (on a belief cascade BP's stage-by-stage step): autograd
applies the rule above layer by layer. A custom Function rather than module backward hooks: hooks
see the wrong tensors on layers without bias and when a layer reshapes its input.

Open choices, and what we picked:
* B_l's distribution: PyTorch's default initialisation of the layer's weight (``reset_parameters``:
  U(-1/sqrt(fan_in), 1/sqrt(fan_in))), drawn independently of W_l. The paper draws B uniformly, at
  a scale it sets per experiment; BioTorch (Sanfiz & Akrout 2021) draws B from W's own initialiser.
  Under Adam (the default optimiser) a constant factor on a layer's B changes nothing but Adam's
  epsilon, since the errors below it are linear in B; under SGD it scales the lower layers' steps.
  On a model with its own initialisation (VGG-11's torchvision init) B keeps the default one.
* Which layers: exactly the classes nn.Linear, nn.Conv1d, nn.Conv2d. Weights used functionally keep
  BP's gradients: nn.MultiheadAttention's projections (a ViT's attention), batch norm's and layer
  norm's scales, a ViT's class token and position embedding.
* Under bf16 autocast a feedback layer casts its input, weight, bias and B to bf16 itself, as
  autocast would for F.linear, so its backward works in one dtype; gradients reach W in float32.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .bp import step  # noqa: F401 (FA's step is BP's: the feedback layers change what autograd computes)

DESCRIPTION = "feedback alignment: errors sent backward through fixed random matrices, not W^T (Lillicrap et al. 2016)"


def random_feedback(weight: Tensor) -> Tensor:
    """B of W's shape, drawn as nn.Linear and nn.ConvNd draw their weights: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    (kaiming_uniform with a = sqrt(5)), independently of W."""
    feedback = torch.empty_like(weight, requires_grad=False)
    nn.init.kaiming_uniform_(feedback, a=math.sqrt(5))
    return feedback


def _autocast_inputs(x: Tensor, *tensors: Tensor | None) -> list[Tensor | None]:
    """Cast the operands to the autocast dtype when autocast is on, as autocast casts F.linear's and
    convolutions' operands (the cast is recorded, so W's gradient comes back in W's dtype)."""
    device = x.device.type
    if not torch.is_autocast_enabled(device):
        return [x, *tensors]
    dtype = torch.get_autocast_dtype(device)
    return [t if t is None else t.to(dtype) for t in (x, *tensors)]


class LinearWithFeedback(torch.autograd.Function):
    """y = x W^T + b; backward: dL/dx = dL/dy B (BP: dL/dy W), dW = dL/dy^T x, db = sum of dL/dy."""

    @staticmethod
    def forward(ctx, x, weight, bias, feedback):
        # B is the layer's persistent state, like W, not an activation: it is kept on ctx rather than
        # saved, so the saved-tensor meter counts FA's activations only (B is never changed in place)
        ctx.save_for_backward(x)
        ctx.feedback = feedback
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_output):
        (x,), feedback = ctx.saved_tensors, ctx.feedback
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_output @ feedback
        rows = grad_output.reshape(-1, grad_output.shape[-1])  # every leading dimension is a sample
        if ctx.needs_input_grad[1]:
            grad_weight = rows.T @ x.reshape(-1, x.shape[-1])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = rows.sum(0)
        return grad_x, grad_weight, grad_bias, None


class ConvWithFeedback(torch.autograd.Function):
    """A 1-D or 2-D convolution y = W * x + b; backward: dL/dx is the transposed convolution of dL/dy
    with B (BP: with W), dW and db as in BP."""

    @staticmethod
    def forward(ctx, x, weight, bias, feedback, stride, padding, dilation, groups):
        # B is the layer's persistent state, like W, not an activation: it is kept on ctx rather than
        # saved, so the saved-tensor meter counts FA's activations only (B is never changed in place)
        ctx.save_for_backward(x)
        ctx.feedback = feedback
        ctx.bias_sizes = None if bias is None else list(bias.shape)
        ctx.geometry = (stride, padding, dilation, groups)
        return torch.convolution(x, weight, bias, stride, padding, dilation, False, [0] * len(stride), groups)

    @staticmethod
    def backward(ctx, grad_output):
        (x,), feedback = ctx.saved_tensors, ctx.feedback
        stride, padding, dilation, groups = ctx.geometry
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                 ctx.bias_sizes is not None and ctx.needs_input_grad[2])
        # The kernel BP's autograd calls, handed B in W's place: the input's gradient is computed with
        # B; the weight's and the bias's gradients do not read the weight's values, only its shape.
        grad_x, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad_output, x, feedback, ctx.bias_sizes, stride, padding, dilation, False, [0] * len(stride),
            groups, needs)
        return grad_x, grad_weight, grad_bias, None, None, None, None, None


def linear_with_feedback(x: Tensor, weight: Tensor, bias: Tensor | None, feedback: Tensor) -> Tensor:
    return LinearWithFeedback.apply(*_autocast_inputs(x, weight, bias, feedback))


def conv_with_feedback(x: Tensor, weight: Tensor, bias: Tensor | None, feedback: Tensor, stride, padding,
                       dilation, groups) -> Tensor:
    x, weight, bias, feedback = _autocast_inputs(x, weight, bias, feedback)
    return ConvWithFeedback.apply(x, weight, bias, feedback, tuple(stride), tuple(padding), tuple(dilation), groups)


class FeedbackLinear(nn.Linear):
    """An nn.Linear whose backward sends the error through its buffer ``feedback`` (made by ``prepare``)."""

    def forward(self, x: Tensor) -> Tensor:
        return linear_with_feedback(x, self.weight, self.bias, self.feedback)


class _FeedbackConv:
    """The forward of a feedback convolution; the padding that the kernels do not take as numbers
    (padding="same", a non-zero padding mode) is applied first, as nn.ConvNd does for the latter."""

    def forward(self, x: Tensor) -> Tensor:
        padding = self.padding
        if isinstance(padding, str) or self.padding_mode != "zeros":
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=mode)
            padding = (0,) * len(self.kernel_size)
        return conv_with_feedback(x, self.weight, self.bias, self.feedback, self.stride, padding, self.dilation,
                                  self.groups)


class FeedbackConv1d(_FeedbackConv, nn.Conv1d):
    pass


class FeedbackConv2d(_FeedbackConv, nn.Conv2d):
    pass


# exact classes only: subclasses such as nn.MultiheadAttention's out_proj are used functionally
FEEDBACK_VERSIONS = {nn.Linear: FeedbackLinear, nn.Conv1d: FeedbackConv1d, nn.Conv2d: FeedbackConv2d}


def feedback_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (FeedbackLinear, FeedbackConv1d, FeedbackConv2d))]


def prepare(model, config) -> None:
    """Give every Linear and Conv1d/Conv2d layer its fixed random B (a buffer: saved, moved with the
    model, never trained), in module order from the global generator, so the run's seed fixes them."""
    for module in model.modules():
        version = FEEDBACK_VERSIONS.get(type(module))
        if version is not None:
            module.__class__ = version  # in place: the same Parameters, so hooks and references stay valid
            module.register_buffer("feedback", random_feedback(module.weight.detach()))
