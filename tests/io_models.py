"""A model whose tensors cannot be told apart by shape, for the I/O conformance test (test_io_conformance.py)."""
from __future__ import annotations

import torch
from torch import nn


class SameSizeIO(nn.Module):
    """Two inputs and three outputs whose layout cannot be guessed from their shapes:
    image (1, 8, 8, 8) NCHW with C == H == W, sequence (1, 8, 8) NCW with C == W (onnx2tf makes both
    channel-last) -> features (1, 8, 8, 8), steps (1, 8, 8) and logits (1, 4)."""

    def __init__(self):
        super().__init__()
        self.image = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.sequence = nn.Sequential(nn.Conv1d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv1d(8, 8, 1))
        self.head = nn.Linear(16, 4)

    def forward(self, image, sequence):
        features = self.image(image)
        steps = self.sequence(sequence) + features.mean(dim=2)  # (N, C, W): the image's columns join the steps
        logits = self.head(torch.cat((features.mean(dim=(2, 3)), steps.mean(dim=2)), dim=1))
        return features, steps, logits


def same_size_io() -> nn.Module:
    torch.manual_seed(0)
    model = SameSizeIO().eval()
    model.input_shapes = {"image": (1, 8, 8, 8), "sequence": (1, 8, 8)}
    return model
