"""Small real models for the tests, built from the example's MobileNetV2 blocks and ResNet-style blocks."""
from __future__ import annotations

import torch
from torch import nn

from edgekit.example.model import make_mobilenet_v2


def mobilenet_v2() -> nn.Module:
    return make_mobilenet_v2()


class BasicBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(out)))


class TinyResNet(nn.Module):
    """ResNet-style classifier for 3x32x32 inputs."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
        self.blocks = nn.Sequential(BasicBlock(16), nn.MaxPool2d(2), BasicBlock(16))
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


def tiny_resnet() -> nn.Module:
    torch.manual_seed(0)
    return TinyResNet().eval()


class TwoHeads(nn.Module):
    """Two outputs: class logits and a feature map (a detector-like output)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.logits = nn.Linear(8, 4)

    def forward(self, x):
        features = self.body(x)
        return self.logits(features.mean(dim=(2, 3))), features


def two_heads() -> nn.Module:
    torch.manual_seed(0)
    return TwoHeads().eval()


def not_a_model():
    return "not a module"


def planted_digits() -> nn.Module:
    """The bundled example with a planted fragile layer: channel 0 of two residual-branch outputs scaled
    1000x (and scaled back in the layers that read them), so float outputs are unchanged while one
    huge channel sets the INT8 range and every other channel of those tensors rounds to zero."""
    from edgekit import example
    from edgekit.example.model import make_model

    model = make_model()
    model.load_state_dict(torch.load(example.WEIGHTS, weights_only=True))
    features = model.features
    with torch.no_grad():
        for bn in (features[6].block[2][1], features[7].block[2][1]):
            bn.weight[0] *= 1000
            bn.bias[0] *= 1000
        for conv in (features[7].block[0][0], features[8][0]):
            conv.weight[:, 0] /= 1000
    return model.eval()
