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
    import torch

    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = torch.cat([forward(model, x[i:i + 256]) for i in range(0, len(x), 256)])
    model.train(was_training)
    return out.float().numpy()


def forward(model, x):
    """The first output of one forward pass, without gradients."""
    import torch

    with torch.no_grad():
        out = model(x)
    return out[0] if isinstance(out, (tuple, list)) else out
