"""Running and measuring a torch model without training it: multiply-accumulates, batched predictions."""
from __future__ import annotations

import math

import numpy as np


def count_macs(model, input_shape) -> int:
    """Multiply-accumulates of Conv and Linear layers, counted as edgekit.graph_stats counts them in ONNX."""
    import torch

    total = 0

    def conv(module, _inputs, output):
        nonlocal total
        total += output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)

    def linear(module, _inputs, output):
        nonlocal total
        total += output.numel() * module.in_features

    hooks = [m.register_forward_hook(conv) for m in model.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
    hooks += [m.register_forward_hook(linear) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    # In eval mode: a training-mode forward of zeros would move every batch-norm's running statistics.
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            forward(model, torch.zeros(input_shape))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return total


def predict(model, x) -> np.ndarray:
    """The first output on `x` in eval mode, in batches of 256; the model's training flag is restored."""
    return predict_all(model, x)[0]


def predict_all(model, x) -> list[np.ndarray]:
    """Every output, the same way."""
    import torch

    was_training = model.training
    model.eval()
    batches = [forward_all(model, x[i:i + 256]) for i in range(0, len(x), 256)]
    model.train(was_training)
    return [torch.cat(parts).float().numpy() for parts in zip(*batches)]


def forward(model, x):
    """The first output of one forward pass, without gradients."""
    return forward_all(model, x)[0]


def forward_all(model, x) -> list:
    """Every output of one forward pass, without gradients."""
    import torch

    with torch.no_grad():
        return outputs_of(model(x))


def outputs_of(result) -> list:
    """A model's outputs as a list: one tensor, a tuple or list of them, or a dict's values in order."""
    if isinstance(result, dict):
        return list(result.values())
    return list(result) if isinstance(result, (tuple, list)) else [result]
