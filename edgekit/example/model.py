"""The bundled example: a MobileNetV2-style classifier for 32x32 grayscale digits.

The building blocks are generic (inverted residuals, depthwise-separable convolutions); the
tests compose a full-size MobileNetV2 from them.
"""
from __future__ import annotations

import torch
from torch import nn

# (expansion t, output channels c, repeats n, first stride s), as in the MobileNetV2 paper.
DIGITS_SETTINGS = [(1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 2), (4, 64, 2, 2)]
IMAGENET_SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                     (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def conv_bn_act(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1,
                act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        layers = [conv_bn_act(cin, hidden, kernel=1)] if expansion != 1 else []
        layers += [conv_bn_act(hidden, hidden, stride=stride, groups=hidden),
                   conv_bn_act(hidden, cout, kernel=1, act=False)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.residual else out


class MobileNetV2Style(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 10, stem: int = 16,
                 settings=DIGITS_SETTINGS, last_channels: int = 128, stem_stride: int = 1,
                 dropout: float = 0.1):
        super().__init__()
        layers = [conv_bn_act(in_channels, stem, stride=stem_stride)]
        cin = stem
        for expansion, cout, repeats, stride in settings:
            for i in range(repeats):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expansion))
                cin = cout
        layers.append(conv_bn_act(cin, last_channels, kernel=1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last_channels, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def make_model() -> MobileNetV2Style:
    """Factory used by `edgekit build` for the bundled example (`edgekit.example.model:make_model`)."""
    return MobileNetV2Style()


def make_student() -> MobileNetV2Style:
    """An untrained student for the example (`edgekit build --student edgekit.example.model:make_student`):
    the same blocks after a stride-2 stem, a quarter of the example's MACs, learned by distillation."""
    return MobileNetV2Style(stem_stride=2)


def make_mobilenet_v2() -> MobileNetV2Style:
    """Full-size MobileNetV2 (3.5 M parameters, 224x224 RGB) with random weights, for tests and benchmarks.

    BatchNorm statistics are estimated on random images so activations keep a realistic scale through
    the network (with default statistics they shrink to ~1e-13 and any parity check passes trivially).
    """
    torch.manual_seed(0)
    model = MobileNetV2Style(in_channels=3, num_classes=1000, stem=32, settings=IMAGENET_SETTINGS,
                             last_channels=1280, stem_stride=2, dropout=0.2)
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(8, 3, 224, 224))
    return model.eval()
