"""Conformance zoo: small model families that edgekit must build end to end (`edgekit build --target ...`).

Every family is small (32x32..128x32 inputs, up to ~100k parameters), deterministic, and has non-degenerate
outputs, so INT8 parity means something. The classifiers carry trained weights (zoo_weights/, made by
tools/train_zoo.py on labeled_images: 99.5-100 % accuracy, large top-1 margins as in real trained nets).
The other families get a data-driven init on image-like inputs (seed INIT_SEED): the first convolution
aligned to the image patches, kaiming elsewhere, BatchNorm running statistics measured, heads rescaled to
zero-mean outputs of a few units. `degeneracy(name)` checks the outputs numerically.

Torch families are `edgekit build tests/zoo.py:<factory>` (each model carries `input_shape`, or
`input_shapes` for several inputs); ONNX families are written by a function taking the file path. `FAMILIES` lists them all with their inputs and data
(`family.data(count, seed)`: one array per input name, plus labels `y` for classifiers, ready for np.savez).
"""
from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

INIT_SEED = 10_000  # data seed the factories calibrate their init on: use other seeds for calib/eval data


# ---- data -------------------------------------------------------------------------------------------

CLASSES = 10  # classes of the classifiers, one per image pattern of labeled_images
_TINTS = np.random.default_rng(CLASSES).uniform(-0.2, 0.2, (CLASSES, 3))  # a colour cast per class


def labeled_images(shape: tuple[int, ...], count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(count, C, H, W) image-like float32 inputs for a model input of `shape` and their (count,) labels.
    Per sample: a colour ramp, low-frequency texture and a few soft blobs, plus its class's pattern
    (stripes whose orientation and frequency depend on the class, and a colour cast), in [0, 1]; then
    standardised per image (mean 0, std 1: with one fixed normalisation, high-contrast images drove the
    randomly initialised SE nets to outliers)."""
    rng = np.random.default_rng(seed)
    channels, height, width = shape[-3:]
    yy, xx = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    labels = rng.integers(0, CLASSES, count)
    out = np.empty((count, channels, height, width), np.float32)
    for i, label in enumerate(labels):
        angle = rng.uniform(0, 2 * np.pi)
        ramp = np.cos(angle) * xx + np.sin(angle) * yy
        image = rng.uniform(0.2, 0.8, (channels, 1, 1)) + rng.uniform(-0.4, 0.4, (channels, 1, 1)) * ramp
        image = image + 0.15 * _smooth_noise(rng, channels, height, width)
        for _ in range(rng.integers(2, 6)):
            cy, cx = rng.uniform(0, 1, 2)
            radius = rng.uniform(0.05, 0.3)
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius ** 2))
            image = image + rng.uniform(-0.6, 0.6, (channels, 1, 1)) * blob
        stripe_angle, cycles = np.pi * (label % 5) / 5, 2 + 3 * (label // 5)
        stripes = np.sin(2 * np.pi * cycles * (np.cos(stripe_angle) * xx + np.sin(stripe_angle) * yy)
                         + rng.uniform(0, 2 * np.pi))
        image = image + rng.uniform(0.6, 0.9) * stripes + _TINTS[label, :channels, None, None]
        out[i] = np.clip(image, 0, 1)
    return (out - out.mean(axis=(1, 2, 3), keepdims=True)) / out.std(axis=(1, 2, 3), keepdims=True), labels


def images(shape: tuple[int, ...], count: int, seed: int) -> np.ndarray:
    """labeled_images without the labels."""
    return labeled_images(shape, count, seed)[0]


def _smooth_noise(rng: np.random.Generator, channels: int, height: int, width: int, grid: int = 5) -> np.ndarray:
    """Standard-normal values on a grid x grid lattice, bilinearly interpolated to height x width."""
    coarse = rng.standard_normal((channels, grid, grid))
    y, x = np.linspace(0, grid - 1, height), np.linspace(0, grid - 1, width)
    y0, x0 = np.minimum(y.astype(int), grid - 2), np.minimum(x.astype(int), grid - 2)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    return (coarse[:, y0][:, :, x0] * (1 - fy) * (1 - fx) + coarse[:, y0 + 1][:, :, x0] * fy * (1 - fx)
            + coarse[:, y0][:, :, x0 + 1] * (1 - fy) * fx + coarse[:, y0 + 1][:, :, x0 + 1] * fy * fx)


WORDS = ("edge", "model", "drone", "phone", "camera", "signal", "vector", "tensor", "river", "stone", "light",
         "seven", "zero", "north", "alpha", "delta", "sigma", "orbit", "pixel", "kernel", "route", "metro", "exit",
         "open", "stop", "gate", "A12", "B7", "2024", "42", "x86", "arm64", "lite", "fast", "slow", "quartz",
         "jump", "wolf", "fox", "lazy", "dog", "OK")


def text_lines(count: int, seed: int, height: int = 32, width: int = 128) -> np.ndarray:
    """(count, 1, height, width) float32 grayscale text lines: random words from WORDS drawn with PIL's
    default font (random size, offset, ink and paper shade, slight noise), normalised as (x - 0.5) / 0.5."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    out = np.empty((count, 1, height, width), np.float32)
    for i in range(count):
        font = ImageFont.load_default(size=int(rng.integers(14, 21)))
        text = str(rng.choice(WORDS))
        while font.getlength(text) < width * 0.6:
            text += " " + str(rng.choice(WORDS))
        while font.getlength(text) > width - 4 and " " in text:
            text = text.rsplit(" ", 1)[0]
        paper = Image.new("L", (width, height), int(rng.integers(170, 250)))
        top = (height - font.getbbox("Mg")[3]) // 2 + int(rng.integers(-2, 3))
        ImageDraw.Draw(paper).text((int(rng.integers(0, 6)), top), text, fill=int(rng.integers(0, 80)), font=font)
        pixels = np.asarray(paper, np.float32) + rng.normal(0, 6, (height, width))
        out[i, 0] = np.clip(pixels, 0, 255) / 255
    return (out - 0.5) / 0.5


# ---- init -------------------------------------------------------------------------------------------

def _ridge(features: np.ndarray, labels: np.ndarray, std: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """A linear classifier (weight (CLASSES, d), bias) fitted by ridge regression of `features` (N, d) onto
    one-hot targets, scaled so that the logits have mean 0 and `std` across samples. The penalty is strong
    (the mean feature variance): a weak one leans on low-variance feature directions, where INT8 noise is
    as large as the signal, and the int8 artifacts of random nets then lose 5-10 dB in the head alone."""
    mean = features.mean(axis=0)
    centered = features - mean
    gram = centered.T @ centered
    penalty = np.trace(gram) / len(gram) * np.eye(len(gram))
    weight = np.linalg.solve(gram + penalty, centered.T @ (np.eye(CLASSES)[labels] - 1 / CLASSES))
    weight *= std / (centered @ weight).std()
    return weight.T, -mean @ weight


def _align_to_patches(conv: nn.Conv2d, images: torch.Tensor) -> None:
    """Data-dependent init of the first convolution: its kernels are random mixes of the principal components
    of the image patches it reads, weighted by their strength (norms kept). Plain random kernels are mostly
    high-pass, which smooth images barely excite but white INT8 rounding noise fully does: 10-13 dB of SNR
    were lost in that one layer."""
    with torch.no_grad():
        patches = nn.functional.unfold(images, conv.kernel_size, stride=conv.stride, padding=conv.padding)
        values, vectors = torch.linalg.eigh(torch.cov(patches.transpose(1, 2).flatten(0, 1).double().T))
        components = vectors * values.clamp(min=0).sqrt()
        weight = torch.randn(conv.out_channels, len(values), dtype=torch.float64) @ components.T
        weight *= conv.weight.flatten(1).norm(dim=1, keepdim=True) / weight.norm(dim=1, keepdim=True)
        conv.weight.copy_(weight.reshape(conv.weight.shape))


def _calibrate(model: nn.Module, inputs: tuple[torch.Tensor, ...],
               heads: list[tuple[nn.Module, float | np.ndarray]]) -> nn.Module:
    """Data-driven init: kaiming weights (the first convolution, which reads inputs[0], aligned to its
    patches), random BatchNorm affine, BatchNorm running statistics measured on `inputs`; then each head
    (layer, target) in turn is set on `inputs`: a float std rescales the layer so that each output channel
    has mean 0 and that std; labels fit it as a classifier (_ridge) on its input features, averaged over
    space for a 1x1 convolution (which commutes with the average)."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)):
            nn.init.uniform_(module.weight, 0.6, 1.4)
            nn.init.normal_(module.bias, 0.1, 0.2)
    _align_to_patches(next(m for m in model.modules() if isinstance(m, nn.Conv2d)), inputs[0])
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    model.train()
    with torch.no_grad():
        for norm in norms:  # momentum None: the running stats become this batch's statistics
            norm.reset_running_stats()
            norm.momentum = None
        model(*inputs)
        for norm in norms:
            norm.momentum = 0.1
            # No channel gets more gain than the median one: random high-pass kernels on smooth images
            # give channels of tiny variance, and normalising them amplifies INT8 noise far beyond what
            # trained networks do.
            norm.running_var.clamp_(min=norm.running_var.median())
    model.eval()
    for head, target in heads:
        captured = []
        hook = head.register_forward_hook(lambda _m, args, output: captured.append((args[0], output)))
        with torch.no_grad():
            model(*inputs)
            hook.remove()
            features, output = captured[0]
            if isinstance(target, np.ndarray):
                features = features.mean(dim=(2, 3)) if features.dim() == 4 else features
                weight, bias = _ridge(features.double().numpy(), target)
                head.weight.copy_(torch.from_numpy(weight).reshape(head.weight.shape))
                head.bias.copy_(torch.from_numpy(bias))
                continue
            channel_dim = -1 if isinstance(head, nn.Linear) else 1
            values = output.movedim(channel_dim, 0).reshape(output.shape[channel_dim], -1)
            gain = target / values.std(dim=1)
            head.weight.mul_(gain.view(-1, *[1] * (head.weight.dim() - 1)))
            head.bias.copy_((head.bias - values.mean(dim=1)) * gain)
    return model


def _image_batch(shape: tuple[int, ...], count: int = 256) -> tuple[torch.Tensor, np.ndarray]:
    """The factories' init data: `count` labeled images drawn with INIT_SEED."""
    x, y = labeled_images(shape, count, INIT_SEED)
    return torch.from_numpy(x), y


def _classifier(model: nn.Module, head: nn.Module) -> nn.Module:
    """_calibrate a single-input image classifier, fitting `head` to labeled_images' classes."""
    x, y = _image_batch(model.input_shape)
    return _calibrate(model, (x,), [(head, y)])


_WEIGHTS = Path(__file__).resolve().parent / "zoo_weights"  # trained state_dicts, written by tools/train_zoo.py


def _trained(model: nn.Module, name: str) -> nn.Module:
    """`model` with the trained weights of family `name` (zoo_weights/<name>.pt) when that file exists, in eval
    mode. The ridge heads of the init leave many near-tie samples, which INT8 rounding flips; trained weights
    have large top-1 margins. The factories still run their init first, so the architecture and the untrained
    fallback stay the same."""
    path = _WEIGHTS / f"{name}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def _conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1,
             act: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, act()) if act else nn.Sequential(*layers)


# ---- 1-3: MobileNetV3, ShuffleNetV2, EfficientNet ---------------------------------------------------

class SqueezeExcite(nn.Module):
    """Channel attention: global average pool, 1x1 reduce, activation, 1x1 expand, gate, rescale."""

    def __init__(self, channels: int, reduced: int, act: type[nn.Module], gate: type[nn.Module]):
        super().__init__()
        self.reduce, self.act = nn.Conv2d(channels, reduced, 1), act()
        self.expand, self.gate = nn.Conv2d(reduced, channels, 1), gate()

    def forward(self, x):
        return x * self.gate(self.expand(self.act(self.reduce(x.mean(dim=(2, 3), keepdim=True)))))


class InvertedResidual(nn.Module):
    """MobileNetV3 bneck / EfficientNet MBConv: 1x1 expand, depthwise kxk, optional SE, 1x1 project, residual."""

    def __init__(self, cin: int, hidden: int, cout: int, kernel: int, stride: int, act: type[nn.Module],
                 se: nn.Module | None = None):
        super().__init__()
        layers = [_conv_bn(cin, hidden, 1, act=act)] if hidden != cin else []
        layers.append(_conv_bn(hidden, hidden, kernel, stride, groups=hidden, act=act))
        layers += [se] if se else []
        layers.append(_conv_bn(hidden, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


def mobilenet_v3() -> nn.Module:
    """MobileNetV3-small style, 1x3x64x64 -> 10 logits: hardswish, SE with hardsigmoid gate."""
    torch.manual_seed(1)
    hs, relu = nn.Hardswish, nn.ReLU

    def se(c, r):
        return SqueezeExcite(c, r, nn.ReLU, nn.Hardsigmoid)

    model = nn.Sequential(
        _conv_bn(3, 16, 3, 2, act=hs),
        InvertedResidual(16, 16, 16, 3, 2, relu, se(16, 8)),
        InvertedResidual(16, 48, 24, 3, 2, relu),
        InvertedResidual(24, 64, 24, 3, 1, relu),
        InvertedResidual(24, 72, 40, 5, 2, hs, se(72, 24)),
        InvertedResidual(40, 120, 40, 5, 1, hs, se(120, 32)),
        _conv_bn(40, 120, 1, act=hs),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(120, 128), nn.Hardswish(), nn.Linear(128, CLASSES))
    model.input_shape = (1, 3, 64, 64)
    x, y = _image_batch(model.input_shape)
    # the hidden Linear centred (mean 0, std 2): its hardswish features then vary more than they share
    return _trained(_calibrate(model, (x,), [(model[-3], 2.0), (model[-1], y)]), "mobilenet_v3")


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit: stride 1 splits the channels and transforms one half; stride 2 transforms both
    copies of the input; then concat and channel shuffle."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        branch = cout // 2
        self.left = (nn.Sequential(_conv_bn(cin, cin, 3, 2, groups=cin, act=None), _conv_bn(cin, branch, 1))
                     if stride == 2 else None)
        right_in = cin if stride == 2 else branch
        self.right = nn.Sequential(_conv_bn(right_in, branch, 1),
                                   _conv_bn(branch, branch, 3, stride, groups=branch, act=None),
                                   _conv_bn(branch, branch, 1))

    def forward(self, x):
        if self.left is None:
            kept, transformed = x.chunk(2, dim=1)
            return channel_shuffle(torch.cat((kept, self.right(transformed)), dim=1))
        return channel_shuffle(torch.cat((self.left(x), self.right(x)), dim=1))


def shufflenet() -> nn.Module:
    """ShuffleNetV2 style, 1x3x32x32 -> 10 logits: split, concat, reshape/transpose/reshape shuffle."""
    torch.manual_seed(2)
    model = nn.Sequential(
        _conv_bn(3, 24, 3, 2),
        ShuffleUnit(24, 48, 2), ShuffleUnit(48, 48, 1), ShuffleUnit(48, 48, 1),
        ShuffleUnit(48, 96, 2), ShuffleUnit(96, 96, 1),
        _conv_bn(96, 192, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(192, CLASSES))
    model.input_shape = (1, 3, 32, 32)
    return _trained(_classifier(model, model[-1]), "shufflenet")


def efficientnet() -> nn.Module:
    """EfficientNet-B0 style, 1x3x48x48 -> 10 logits: SiLU, MBConv, SE with sigmoid gate."""
    torch.manual_seed(3)
    silu = nn.SiLU

    def se(c, r):
        return SqueezeExcite(c, r, nn.SiLU, nn.Sigmoid)

    model = nn.Sequential(
        _conv_bn(3, 16, 3, 2, act=silu),
        InvertedResidual(16, 16, 16, 3, 1, silu, se(16, 4)),
        InvertedResidual(16, 64, 24, 3, 2, silu, se(64, 4)),
        InvertedResidual(24, 96, 24, 3, 1, silu, se(96, 6)),
        InvertedResidual(24, 96, 40, 5, 2, silu, se(96, 6)),
        _conv_bn(40, 160, 1, act=silu), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(160, CLASSES))
    model.input_shape = (1, 3, 48, 48)
    return _trained(_classifier(model, model[-1]), "efficientnet")


# ---- 4-5: SqueezeNet, ResNet ------------------------------------------------------------------------

class Fire(nn.Module):
    """SqueezeNet fire module: 1x1 squeeze, then 1x1 and 3x3 expands concatenated."""

    def __init__(self, cin: int, squeeze: int, expand: int):
        super().__init__()
        self.squeeze = nn.Sequential(nn.Conv2d(cin, squeeze, 1), nn.ReLU())
        self.expand1 = nn.Sequential(nn.Conv2d(squeeze, expand, 1), nn.ReLU())
        self.expand3 = nn.Sequential(nn.Conv2d(squeeze, expand, 3, padding=1), nn.ReLU())

    def forward(self, x):
        x = self.squeeze(x)
        return torch.cat((self.expand1(x), self.expand3(x)), dim=1)


def squeezenet() -> nn.Module:
    """SqueezeNet 1.1 style (no BatchNorm), 1x3x64x64 -> 10 logits: fire modules, ceil-mode max pools,
    a 1x1 conv + ReLU classifier averaged over space."""
    torch.manual_seed(4)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, 2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
        Fire(32, 8, 16), Fire(32, 8, 16), nn.MaxPool2d(3, 2, ceil_mode=True),
        Fire(32, 16, 32), Fire(64, 16, 32),
        nn.Conv2d(64, CLASSES, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model.input_shape = (1, 3, 64, 64)
    model = _classifier(model, model[-4])
    with torch.no_grad():  # logits lifted by 2 std, so that the ReLU rarely clips them into ties at 0
        model[-4].bias += 6.0
    return _trained(model, "squeezenet")


class BasicBlock(nn.Module):
    """ResNet basic block; a strided or widening block has a 1x1 conv + BN shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(_conv_bn(cin, cout, 3, stride), _conv_bn(cout, cout, 3, act=None))
        self.shortcut = _conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return torch.relu(self.body(x) + self.shortcut(x))


def resnet() -> nn.Module:
    """ResNet style, 1x3x32x32 -> 10 logits: basic blocks with identity and projection shortcuts."""
    torch.manual_seed(5)
    model = nn.Sequential(
        _conv_bn(3, 16), BasicBlock(16, 16), BasicBlock(16, 16), BasicBlock(16, 32, 2), BasicBlock(32, 32),
        BasicBlock(32, 64, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, CLASSES))
    model.input_shape = (1, 3, 32, 32)
    return _trained(_classifier(model, model[-1]), "resnet")


# ---- 6: face detector -------------------------------------------------------------------------------

class FaceDetector(nn.Module):
    """RetinaFace/SCRFD-lite, 1x3x64x64: depthwise-separable backbone, two-level FPN (strides 8 and 16),
    2 anchors per location (A = 160). Outputs scores (1, A) sigmoid, boxes (1, A, 4), landmarks (1, A, 10)."""

    anchors = 2

    def __init__(self):
        super().__init__()

        def separable(cin, cout):
            return nn.Sequential(_conv_bn(cin, cin, 3, 2, groups=cin), _conv_bn(cin, cout, 1))

        self.stem = _conv_bn(3, 16, 3, 2)
        self.stage8 = nn.Sequential(separable(16, 32), separable(32, 48))
        self.stage16 = separable(48, 64)
        self.lateral8, self.lateral16 = _conv_bn(48, 32, 1), _conv_bn(64, 32, 1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.smooth8 = _conv_bn(32, 32, 3)
        self.scores = nn.ModuleList(nn.Conv2d(32, self.anchors, 1) for _ in range(2))
        self.boxes = nn.ModuleList(nn.Conv2d(32, self.anchors * 4, 1) for _ in range(2))
        self.landmarks = nn.ModuleList(nn.Conv2d(32, self.anchors * 10, 1) for _ in range(2))

    @staticmethod
    def _flatten(maps: list[torch.Tensor], width: int) -> torch.Tensor:
        return torch.cat([m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, width) for m in maps], dim=1)

    def forward(self, x):
        c8 = self.stage8(self.stem(x))
        p16 = self.lateral16(self.stage16(c8))
        p8 = self.smooth8(self.lateral8(c8) + self.up(p16))
        levels = (p8, p16)
        scores = self._flatten([head(p) for head, p in zip(self.scores, levels)], 1).squeeze(-1)
        boxes = self._flatten([head(p) for head, p in zip(self.boxes, levels)], 4)
        landmarks = self._flatten([head(p) for head, p in zip(self.landmarks, levels)], 10)
        return torch.sigmoid(scores), boxes, landmarks


def face_detector() -> nn.Module:
    torch.manual_seed(6)
    model = FaceDetector()
    model.input_shape = (1, 3, 64, 64)
    heads = [(h, 2.0) for h in model.scores] + [(h, 1.0) for h in (*model.boxes, *model.landmarks)]
    return _calibrate(model, (_image_batch(model.input_shape, 64)[0],), heads)


class RNet(nn.Module):
    """MTCNN R-Net (the refinement stage of the MTCNN face detector), 1x3x24x24 face crop: PReLU, ceil-mode max
    pools, a permute(0, 3, 2, 1) before view(N, -1), then two Linear heads: boxes (1, 4) and face/no-face (1, 2)
    Softmax."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 28, 3), nn.PReLU(28), nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.Conv2d(28, 48, 3), nn.PReLU(48), nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.Conv2d(48, 64, 2), nn.PReLU(64))
        self.dense, self.prelu = nn.Linear(576, 128), nn.PReLU(128)
        self.boxes, self.faces = nn.Linear(128, 4), nn.Linear(128, 2)

    def forward(self, x):
        x = self.features(x).permute(0, 3, 2, 1).contiguous()
        x = self.prelu(self.dense(x.view(x.shape[0], -1)))
        return self.boxes(x), torch.softmax(self.faces(x), dim=1)


def rnet() -> nn.Module:
    """R-Net with data-driven weights: PReLU slopes spread like the published ones (0-0.5), box offsets of
    std 0.2 (values span about +-0.6, as on real crops), face logits of std 3."""
    torch.manual_seed(24)
    model = RNet()
    model.input_shape = (1, 3, 24, 24)
    for prelu in model.modules():
        if isinstance(prelu, nn.PReLU):
            nn.init.uniform_(prelu.weight, 0.0, 0.5)
    return _calibrate(model, (_image_batch(model.input_shape)[0],), [(model.dense, 1.0), (model.boxes, 0.2), (model.faces, 3.0)]).eval()


# ---- 7: text recognizer -----------------------------------------------------------------------------

TEXT_SHAPE = (1, 1, 32, 128)
TEXT_CLASSES = 37  # CTC blank + 0-9 + a-z


class AttentionBlock(nn.Module):
    """Pre-norm transformer encoder layer over the sequence (learned positions, 4 heads)."""

    def __init__(self, width: int, length: int):
        super().__init__()
        self.position = nn.Parameter(0.2 * torch.randn(1, length, width))
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attention = nn.MultiheadAttention(width, 4, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, x):
        x = x + self.position
        y = self.norm1(x)
        x = x + self.attention(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class BiLSTM(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.rnn = nn.LSTM(width, width // 2, bidirectional=True, batch_first=True)

    def forward(self, x):
        return self.rnn(x)[0]


class TextRecognizer(nn.Module):
    """CRNN-style, 1x1x32x128 grayscale line -> (1, 32, 37) per-step class probabilities: conv stages pool
    the height to 2 and the width to 32, the height is averaged away, a sequence model runs over the 32
    steps, then Linear + Softmax over the last axis."""

    def __init__(self, sequence: nn.Module):
        super().__init__()
        self.cnn = nn.Sequential(
            _conv_bn(1, 16), nn.MaxPool2d(2), _conv_bn(16, 32), nn.MaxPool2d(2),
            _conv_bn(32, 64), nn.MaxPool2d((2, 1)), _conv_bn(64, 64), nn.MaxPool2d((2, 1)))
        self.sequence = sequence
        self.classifier = nn.Linear(64, TEXT_CLASSES)

    def forward(self, x):
        steps = self.cnn(x).mean(dim=2).transpose(1, 2)  # (N, 64, 2, 32) -> (N, 32, 64)
        return self.classifier(self.sequence(steps)).softmax(dim=-1)


def _text_recognizer(sequence: nn.Module) -> nn.Module:
    model = TextRecognizer(sequence)
    model.input_shape = TEXT_SHAPE
    # std 2 (not 3): sharper softmaxes leave some (step, class) probabilities at ~0 for every sample
    return _calibrate(model, (torch.from_numpy(text_lines(64, INIT_SEED)),), [(model.classifier, 2.0)])


def text_recognizer() -> nn.Module:
    """Text recognizer with a self-attention sequence model (MultiheadAttention, LayerNorm, GELU)."""
    torch.manual_seed(7)
    return _text_recognizer(AttentionBlock(64, 32))


def text_recognizer_lstm() -> nn.Module:
    """Text recognizer with a bidirectional LSTM (exported as one ONNX LSTM node)."""
    torch.manual_seed(7)
    return _text_recognizer(BiLSTM(64))


# ---- 8: U-Net ---------------------------------------------------------------------------------------

class UNet(nn.Module):
    """U-Net, 1x3x64x64 -> (1, 1, 64, 64) sigmoid probability map: two poolings, skip concatenations,
    one ConvTranspose2d and one bilinear Upsample on the way up."""

    def __init__(self):
        super().__init__()

        def double(cin, cout):
            return nn.Sequential(_conv_bn(cin, cout), _conv_bn(cout, cout))

        self.enc1, self.enc2, self.bottom = double(3, 16), double(16, 32), double(32, 48)
        self.pool = nn.MaxPool2d(2)
        self.up2 = nn.ConvTranspose2d(48, 32, 2, stride=2)
        self.dec2 = double(64, 32)
        self.up1 = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear"), _conv_bn(32, 16, 1))
        self.dec1 = double(32, 16)
        self.head = nn.Conv2d(16, 1, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        bottom = self.bottom(self.pool(e2))
        d2 = self.dec2(torch.cat((self.up2(bottom), e2), dim=1))
        d1 = self.dec1(torch.cat((self.up1(d2), e1), dim=1))
        return torch.sigmoid(self.head(d1))


def unet() -> nn.Module:
    torch.manual_seed(8)
    model = UNet()
    model.input_shape = (1, 3, 64, 64)
    return _calibrate(model, (_image_batch(model.input_shape, 64)[0],), [(model.head, 2.0)])


# ---- 9: two inputs ----------------------------------------------------------------------------------

TWO_INPUTS = {"image": (1, 3, 32, 32), "vector": (1, 8)}


class TwoInput(nn.Module):
    """Image (1, 3, 32, 32) + vector (1, 8) -> 10 logits: a conv branch and an MLP branch, concatenated."""

    def __init__(self):
        super().__init__()
        self.image = nn.Sequential(_conv_bn(3, 16, 3, 2), _conv_bn(16, 32, 3, 2), nn.AdaptiveAvgPool2d(1),
                                   nn.Flatten())
        self.vector = nn.Sequential(nn.Linear(8, 32), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, CLASSES))

    def forward(self, image, vector):
        return self.head(torch.cat((self.image(image), self.vector(vector)), dim=1))


_CLASS_VECTORS = np.random.default_rng(2 * CLASSES).standard_normal((CLASSES, 8))


def _two_input_data(count: int, seed: int) -> dict[str, np.ndarray]:
    """Labeled images and, per sample, its class's fixed random vector plus as much noise."""
    x, y = labeled_images(TWO_INPUTS["image"], count, seed)
    noise = np.random.default_rng(seed + 1).standard_normal((count, 8))
    return {"image": x, "vector": (_CLASS_VECTORS[y] + noise).astype(np.float32), "y": y}


def two_input() -> nn.Module:
    """The two-input model as a torch factory (`input_shapes` declares both inputs, in forward's order)."""
    torch.manual_seed(9)
    model = TwoInput()
    model.input_shapes = TWO_INPUTS
    data = _two_input_data(256, INIT_SEED)
    inputs = tuple(torch.from_numpy(data[name]) for name in TWO_INPUTS)
    return _trained(_calibrate(model, inputs, [(model.head[-1], data["y"])]), "two_input")


def two_input_onnx(path: str | Path) -> Path:
    """The two-input model exported (torch.export-based exporter, opset 18) with inputs 'image', 'vector'
    and output 'logits'."""
    path = Path(path)
    args = tuple(torch.zeros(shape) for shape in TWO_INPUTS.values())
    torch.onnx.export(two_input(), args, str(path), dynamo=True, opset_version=18, input_names=list(TWO_INPUTS),
                      output_names=["logits"], external_data=False, verbose=False)
    return path


# ---- 10: paddle2onnx-style ONNX ---------------------------------------------------------------------

class PaddleGraph:
    """Builds an opset-11 graph the way paddle2onnx writes one: Conv without bias then a separate
    BatchNormalization, conv bias as an Add, Clip with min/max inputs, hardswish as HardSigmoid * x,
    paddle-style tensor names. Weights come from a seeded numpy RNG."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.initializers, self.count = [], [], {}

    def name(self, kind: str) -> str:
        self.count[kind] = self.count.get(kind, -1) + 1
        return f"{kind}_{self.count[kind]}"

    def const(self, prefix: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.name(prefix)
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], kind: str, **attrs) -> str:
        from onnx import helper

        out = f"{self.name(kind)}.tmp_0"
        self.nodes.append(helper.make_node(op, inputs, [out], name=out.split(".")[0], **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> str:
        fan_in = cin // groups * kernel * kernel
        weight = self.rng.normal(0, np.sqrt(2 / fan_in), (cout, cin // groups, kernel, kernel)).astype(np.float32)
        return self.node("Conv", [x, self.const("conv2d_w", weight)], "conv2d", kernel_shape=[kernel, kernel],
                         strides=[stride, stride], pads=[kernel // 2] * 4, group=groups, dilations=[1, 1])

    def batch_norm(self, x: str, channels: int) -> str:
        # running mean/var are placeholders until fit_batch_norms measures them on data
        params = [self.rng.uniform(0.6, 1.4, channels), self.rng.normal(0.1, 0.2, channels),
                  np.zeros(channels), np.ones(channels)]
        names = [self.const(f"batch_norm_{p}", v.astype(np.float32)) for p, v in zip("wbmv", params)]
        return self.node("BatchNormalization", [x, *names], "batch_norm", epsilon=1e-5, momentum=0.9)

    def conv_bn(self, x: str, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                act: str = "relu") -> str:
        y = self.batch_norm(self.conv(x, cin, cout, kernel, stride, groups), cout)
        if act == "relu":
            return self.node("Relu", [y], "relu")
        if act == "relu6":
            return self.node("Clip", [y, self.const("clip_min", np.array(0, np.float32)),
                                      self.const("clip_max", np.array(6, np.float32))], "relu6")
        gate = self.node("HardSigmoid", [y], "hard_sigmoid", alpha=1 / 6, beta=0.5)
        return self.node("Mul", [y, gate], "hard_swish")

    def model(self, inputs: dict[str, tuple[int, ...]], outputs: dict[str, tuple[int, ...]]):
        from onnx import TensorProto, helper

        graph = helper.make_graph(
            self.nodes, "paddle_infer_model",
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs.items()], self.initializers)
        model = helper.make_model(graph, producer_name="PaddlePaddle", ir_version=6,
                                  opset_imports=[helper.make_opsetid("", 11)])
        return model


def _run_onnx(model: bytes | str, names: list[str], arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The named tensors of an ONNX model (serialized or a path) over a batch, one sample at a time (the
    graphs have batch 1)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    count = len(next(iter(arrays.values())))
    runs = [session.run(names, {k: v[i:i + 1] for k, v in arrays.items()}) for i in range(count)]
    return [np.concatenate(values) for values in zip(*runs)]


def _tensor_values(model, feeds: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
    """Intermediate tensors of an in-memory ONNX model on `feeds`."""
    import onnx

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    return _run_onnx(probe.SerializeToString(), names, feeds)


def _fit_batch_norms(model, feeds: dict[str, np.ndarray]) -> None:
    """The ONNX twin of _calibrate's statistics pass: each BatchNormalization's mean and variance set, in
    graph order, to those of its input on `feeds` (variance floored at the median, as there)."""
    for node in (n for n in model.graph.node if n.op_type == "BatchNormalization"):
        (value,) = _tensor_values(model, feeds, [node.input[0]])
        variance = value.var(axis=(0, 2, 3))
        _set_initializer(model, node.input[3], value.mean(axis=(0, 2, 3)))
        _set_initializer(model, node.input[4], np.maximum(variance, np.median(variance)))


def _set_initializer(model, name: str, value: np.ndarray) -> None:
    from onnx import numpy_helper

    initializer = next(i for i in model.graph.initializer if i.name == name)
    initializer.CopyFrom(numpy_helper.from_array(value.astype(np.float32).reshape(initializer.dims), name))


def _initializer(model, name: str) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == name))


PADDLE_INPUT = {"x": (1, 3, 32, 32)}
PADDLE_CLASSIFIER_OUTPUT = "save_infer_model/scale_0.tmp_0"
PADDLE_DETECTOR_OUTPUT = "save_infer_model/scale_0.tmp_1"


def _paddle_softmax_head(g: PaddleGraph, pooled: str, shape: str, path: str | Path) -> Path:
    """The classifiers' head as paddle2onnx writes it: Reshape(pooled, shape) -> MatMul -> Add -> Softmax(axis=1),
    its BatchNorms measured and the linear layer fitted (_ridge) to labeled_images' classes; saved at `path`."""
    import onnx

    flat = g.node("Reshape", [pooled, shape], "flatten")
    weight, bias = g.const("fc_w", np.zeros((64, CLASSES), np.float32)), g.const("fc_b", np.zeros(CLASSES, np.float32))
    logits = g.node("Add", [g.node("MatMul", [flat, weight], "matmul"), bias], "fc")
    g.nodes.append(onnx.helper.make_node("Softmax", [logits], [PADDLE_CLASSIFIER_OUTPUT], name="softmax_0", axis=1))
    model = g.model(PADDLE_INPUT, {PADDLE_CLASSIFIER_OUTPUT: (1, CLASSES)})
    x, y = labeled_images(PADDLE_INPUT["x"], 256, INIT_SEED)
    _fit_batch_norms(model, {"x": x})
    (features,) = _tensor_values(model, {"x": x}, [flat])
    fitted_weight, fitted_bias = _ridge(features.astype(np.float64), y)
    _set_initializer(model, weight, fitted_weight.T)
    _set_initializer(model, bias, fitted_bias)
    return _save_checked(model, path)


def paddle_style_classifier_onnx(path: str | Path) -> Path:
    """PP-LCNet-like classifier as paddle2onnx writes it at opset 11, x (1, 3, 32, 32) -> softmax (1, 10):
    Conv + separate BatchNormalization, hardswish as HardSigmoid * x, relu6 as Clip, conv bias as Add, a
    channel shuffle with Reshape shapes from initializers, GlobalAveragePool, a flatten whose Reshape shape
    comes from Shape -> Gather -> Unsqueeze -> Concat, MatMul + Add, then Softmax(axis=1) on 2-D."""
    g = PaddleGraph(seed=10)
    x = g.conv_bn("x", 3, 16, 3, 2, act="hard_swish")  # 16x16
    x = g.conv_bn(x, 16, 16, 3, 1, groups=16, act="relu6")
    x = g.node("Add", [g.conv(x, 16, 32, 1), g.const("conv2d_b", np.zeros((1, 32, 1, 1), np.float32))],
               "elementwise_add")
    x = g.node("Relu", [g.batch_norm(x, 32)], "relu")
    x = g.node("Reshape", [x, g.const("shape", np.array([1, 2, 16, 16, 16], np.int64))], "reshape2")
    x = g.node("Transpose", [x], "transpose", perm=[0, 2, 1, 3, 4])
    x = g.node("Reshape", [x, g.const("shape", np.array([1, 32, 16, 16], np.int64))], "reshape2")
    x = g.conv_bn(x, 32, 32, 3, 2, groups=32, act="hard_swish")  # 8x8
    x = g.conv_bn(x, 32, 64, 1, act="hard_swish")
    pooled = g.node("GlobalAveragePool", [x], "pool2d")
    batch = g.node("Gather", [g.node("Shape", [pooled], "shape"), g.const("index", np.array(0, np.int64))],
                   "gather", axis=0)
    batch = g.node("Unsqueeze", [batch], "unsqueeze2", axes=[0])
    shape = g.node("Concat", [batch, g.const("shape", np.array([-1], np.int64))], "concat", axis=0)
    return _paddle_softmax_head(g, pooled, shape, path)


def paddle_style_direction_onnx(path: str | Path) -> Path:
    """PP-LCNet text-direction classifier head as paddle2onnx writes it at opset 11, x (1, 3, 32, 32) -> softmax
    (1, 10): the flatten is a Reshape whose shape is Shape -> Slice -> Cast concatenated with a constant, then
    MatMul -> Add -> Softmax(axis=1). With the input shape fixed, that shape subgraph is a constant."""
    import onnx

    g = PaddleGraph(seed=12)
    x = g.conv_bn("x", 3, 16, 3, 2, act="hard_swish")  # 16x16
    x = g.conv_bn(x, 16, 32, 3, 2, act="relu6")  # 8x8
    x = g.conv_bn(x, 32, 32, 3, 1, groups=32, act="hard_swish")
    pooled = g.node("GlobalAveragePool", [g.conv_bn(x, 32, 64, 1, act="hard_swish")], "pool2d")
    batch = g.node("Slice", [g.node("Shape", [pooled], "shape"), g.const("starts", np.array([0], np.int64)),
                             g.const("ends", np.array([1], np.int64)), g.const("axes", np.array([0], np.int64))],
                   "slice")
    batch = g.node("Cast", [batch], "cast", to=onnx.TensorProto.INT64)
    shape = g.node("Concat", [batch, g.const("shape", np.array([-1], np.int64))], "concat", axis=0)
    return _paddle_softmax_head(g, pooled, shape, path)


def paddle_style_detector_onnx(path: str | Path) -> Path:
    """DB-text-detector-like head as paddle2onnx writes it at opset 11, x (1, 3, 32, 32) -> sigmoid map
    (1, 1, 32, 32): Conv + BatchNormalization, Resize (nearest, asymmetric, empty roi input), Concat skip,
    ConvTranspose with bias, 1x1 Conv with bias, Sigmoid."""
    import onnx

    g = PaddleGraph(seed=11)
    c16 = g.conv_bn("x", 3, 16, 3, 2)  # 16x16
    c8 = g.conv_bn(c16, 16, 32, 3, 2)  # 8x8
    up = g.node("Resize", [c8, g.const("roi", np.zeros(0, np.float32)),
                           g.const("scales", np.array([1, 1, 2, 2], np.float32))], "nearest_interp_v2",
                mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    x = g.conv_bn(g.node("Concat", [up, c16], "concat", axis=1), 48, 16, 3)
    weight = g.rng.normal(0, np.sqrt(2 / 16), (16, 8, 2, 2)).astype(np.float32)
    x = g.node("ConvTranspose", [x, g.const("conv2d_transpose_w", weight), g.const("conv2d_transpose_b",
                                                                                   np.zeros(8, np.float32))],
               "conv2d_transpose", kernel_shape=[2, 2], strides=[2, 2])  # 32x32
    x = g.node("Relu", [g.batch_norm(x, 8)], "relu")
    head_weight = g.const("conv2d_w", g.rng.normal(0, 0.5, (1, 8, 1, 1)).astype(np.float32))
    head_bias = g.const("conv2d_b", np.zeros(1, np.float32))
    logits = g.node("Conv", [x, head_weight, head_bias], "conv2d", kernel_shape=[1, 1])
    g.nodes.append(onnx.helper.make_node("Sigmoid", [logits], [PADDLE_DETECTOR_OUTPUT], name="sigmoid_0"))
    model = g.model(PADDLE_INPUT, {PADDLE_DETECTOR_OUTPUT: (1, 1, 32, 32)})
    feeds = {"x": images(PADDLE_INPUT["x"], 256, INIT_SEED)}
    _fit_batch_norms(model, feeds)
    (value,) = _tensor_values(model, feeds, [logits])  # the one logit channel: mean 0, std 2, as in _calibrate
    gain = 2.0 / value.std()
    _set_initializer(model, head_weight, _initializer(model, head_weight) * gain)
    _set_initializer(model, head_bias, (_initializer(model, head_bias) - value.mean()) * gain)
    return _save_checked(model, path)


def _save_checked(model, path: str | Path) -> Path:
    import onnx

    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    onnx.save(model, str(path))
    return path


# ---- 11: a Keras model exported by tf2onnx ------------------------------------------------------------

KERAS_INPUT = {"image": (1, 32, 32, 3)}  # channels last, as Keras takes images


def _channels_last_images(count: int, seed: int) -> dict[str, np.ndarray]:
    x, y = labeled_images((1, 3, 32, 32), count, seed)
    return {"image": np.ascontiguousarray(x.transpose(0, 2, 3, 1)), "y": y}


def keras_tf2onnx(path: str | Path) -> Path:
    """A MobileNet-style Keras classifier exported by tf2onnx (opset 13) from a tf.function, image (1, 32, 32, 3)
    channels last -> softmax (1, 10) and a sigmoid score (1, 1), named 'Identity:0' and 'Identity_1:0': a
    Transpose to NCHW at the input, Conv with the BatchNormalization folded in, DepthwiseConv2D with it as
    Mul + Add, ReLU6 as Clip, a residual Add, GlobalAveragePool + Squeeze, Dense layers as Gemm. Weights:
    Keras's initializers (seeded), BatchNormalization statistics measured on images, the class head fitted
    by ridge regression as the other zoo heads, the score's logit scaled to mean 0 and std 2."""
    Path(path).write_bytes(_keras_tf2onnx_bytes())
    return Path(path)


@functools.cache
def _keras_tf2onnx_bytes() -> bytes:
    import tensorflow as tf
    import tf2onnx

    keras = tf.keras
    keras.utils.set_random_seed(12)
    layers = keras.layers

    def conv_bn(x, filters: int, kernel: int, stride: int = 1, depthwise: bool = False):
        conv = (layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False) if depthwise else
                layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False))
        return layers.ReLU(6.0)(layers.BatchNormalization()(conv(x)))

    image = keras.Input(KERAS_INPUT["image"][1:], batch_size=1, name="image")
    x = conv_bn(image, 16, 3, 2)  # 16x16
    x = conv_bn(x, 16, 3, depthwise=True)
    x = conv_bn(x, 32, 1)
    block = conv_bn(conv_bn(x, 32, 3, depthwise=True), 32, 1)
    x = layers.Add()([x, block])
    x = conv_bn(conv_bn(x, 32, 3, 2, depthwise=True), 64, 1)  # 8x8
    features = layers.GlobalAveragePooling2D()(x)
    head, score = layers.Dense(CLASSES, activation="softmax"), layers.Dense(1, activation="sigmoid")
    model = keras.Model(image, [head(features), score(features)])

    data = _channels_last_images(256, INIT_SEED)
    rng = np.random.default_rng(12)
    for norm in [layer for layer in model.layers if isinstance(layer, layers.BatchNormalization)]:
        value = keras.Model(image, norm.input)(data["image"]).numpy()  # BatchNorms before it are measured
        variance = value.var(axis=(0, 1, 2))
        gamma = rng.uniform(0.6, 1.4, variance.shape)
        norm.set_weights([gamma, np.full(variance.shape, 0.1), value.mean(axis=(0, 1, 2)),
                          np.maximum(variance, np.median(variance))])
    pooled = keras.Model(image, features)(data["image"]).numpy()
    weight, bias = _ridge(pooled.astype(np.float64), data["y"])
    head.set_weights([weight.T.astype(np.float32), bias.astype(np.float32)])
    direction = rng.standard_normal((pooled.shape[1], 1))
    logit = pooled @ direction  # the score's logit: mean 0 and std 2 over the images, as the detectors' heads
    gain = 2.0 / logit.std()
    score.set_weights([(direction * gain).astype(np.float32), (-logit.mean(0) * gain).astype(np.float32)])

    signature = (tf.TensorSpec(KERAS_INPUT["image"], tf.float32, name="image"),)
    onnx_model, _ = tf2onnx.convert.from_function(tf.function(lambda x: model(x, training=False)),
                                                  input_signature=signature, opset=13)
    return onnx_model.SerializeToString()


# ---- registry ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Family:
    name: str
    kind: str  # classifier | detector | recognizer | segmenter
    inputs: dict[str, tuple[int, ...]]  # input name -> shape (batch 1), in the model's argument order
    data: Callable[[int, int], dict[str, np.ndarray]]  # (count, seed) -> one array per input name (+ labels y)
    factory: Callable[[], nn.Module] | None = None  # torch families
    writer: Callable[[Path], Path] | None = None  # ONNX families: writes the file at the given path
    note: str = ""

    def source(self, folder: str | Path) -> str:
        """What to pass to `edgekit build`: `.../zoo.py:factory`, or the ONNX file written into `folder`."""
        if self.factory is not None:
            return f"{Path(__file__).resolve()}:{self.factory.__name__}"
        return str(self.writer(Path(folder) / f"{self.name}.onnx"))


def _images_of(inputs: dict[str, tuple[int, ...]], labeled: bool) -> Callable[[int, int], dict[str, np.ndarray]]:
    (name, shape), = inputs.items()

    def data(count: int, seed: int) -> dict[str, np.ndarray]:
        x, y = labeled_images(shape, count, seed)
        return {name: x, "y": y} if labeled else {name: x}

    return data


def _family(name: str, kind: str, factory: Callable[[], nn.Module], shape: tuple[int, ...], note: str = "",
            data: Callable[[int, int], np.ndarray] | None = None) -> Family:
    inputs = {"input": shape}  # edgekit names a torch model's single input "input"
    loader = (lambda count, seed: {"input": data(count, seed)}) if data else _images_of(inputs, kind == "classifier")
    return Family(name, kind, inputs, loader, factory=factory, note=note)


FAMILIES: dict[str, Family] = {f.name: f for f in [
    _family("mobilenet_v3", "classifier", mobilenet_v3, (1, 3, 64, 64),
            "hardswish, SE hardsigmoid, inverted residuals"),
    _family("shufflenet", "classifier", shufflenet, (1, 3, 32, 32), "channel shuffle, chunk/concat"),
    _family("efficientnet", "classifier", efficientnet, (1, 3, 48, 48), "SiLU, MBConv, SE sigmoid"),
    _family("squeezenet", "classifier", squeezenet, (1, 3, 64, 64), "fire modules, ceil-mode pools, no BN"),
    _family("resnet", "classifier", resnet, (1, 3, 32, 32), "basic blocks, projection shortcuts"),
    _family("face_detector", "detector", face_detector, (1, 3, 64, 64),
            "3 outputs: scores (1,160) sigmoid, boxes (1,160,4), landmarks (1,160,10)"),
    _family("text_recognizer", "recognizer", text_recognizer, TEXT_SHAPE,
            "conv + self-attention + softmax over the last axis, (1,32,37)", data=text_lines),
    _family("text_recognizer_lstm", "recognizer", text_recognizer_lstm, TEXT_SHAPE,
            "conv + BiLSTM + softmax over the last axis, (1,32,37)", data=text_lines),
    _family("unet", "segmenter", unet, (1, 3, 64, 64), "skips, ConvTranspose2d, bilinear Upsample, sigmoid map"),
    Family("two_input", "classifier", TWO_INPUTS, _two_input_data, factory=two_input,
           note="torch factory with two inputs (image, vector)"),
    Family("two_input_onnx", "classifier", TWO_INPUTS, _two_input_data, writer=two_input_onnx,
           note="the two-input model as an ONNX file"),
    Family("paddle_classifier", "classifier", PADDLE_INPUT, _images_of(PADDLE_INPUT, True),
           writer=paddle_style_classifier_onnx, note="paddle2onnx-style opset 11, Softmax(axis=1) output"),
    Family("paddle_direction", "classifier", PADDLE_INPUT, _images_of(PADDLE_INPUT, True),
           writer=paddle_style_direction_onnx,
           note="paddle2onnx-style opset 11, flatten shape from Shape -> Slice -> Cast -> Concat, Softmax(axis=1)"),
    Family("paddle_detector", "segmenter", PADDLE_INPUT, _images_of(PADDLE_INPUT, False),
           writer=paddle_style_detector_onnx,
           note="paddle2onnx-style opset 11 DB-like head, Resize + ConvTranspose, sigmoid map"),
    Family("keras_tf2onnx", "classifier", KERAS_INPUT, _channels_last_images, writer=keras_tf2onnx,
           note="Keras model exported by tf2onnx: channels-last input, Softmax and Sigmoid outputs 'Identity:0', "
                "'Identity_1:0'"),
]}


# ---- checks -----------------------------------------------------------------------------------------

def reference_outputs(family: Family, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The family's float outputs on `arrays` (PyTorch for torch families, ONNX Runtime for ONNX files)."""
    if family.factory is not None:
        with torch.no_grad():
            result = family.factory()(*(torch.from_numpy(arrays[name]) for name in family.inputs))
        values = result if isinstance(result, tuple) else (result,)
        return {f"output_{i}": v.numpy() for i, v in enumerate(values)}
    import onnx

    with tempfile.TemporaryDirectory() as folder:
        model = onnx.load(family.source(folder))
    names = [o.name for o in model.graph.output]
    return dict(zip(names, _run_onnx(model.SerializeToString(), names, {n: arrays[n] for n in family.inputs})))


def degeneracy(name: str, count: int = 64, seed: int = 1) -> list[str]:
    """Why the family's outputs would make parity meaningless (empty when they are fine): a tiny output, an
    output element that barely varies across `count` samples (std below 1e-3 of the output's magnitude;
    elements below 1% of that magnitude in every sample, e.g. unlikely softmax classes, are ignored), or a
    classifier whose top-1 class takes fewer than 3 values."""
    family = FAMILIES[name]
    problems = []
    for output, value in reference_outputs(family, family.data(count, seed)).items():
        flat = np.abs(value.reshape(count, -1).astype(np.float64))
        magnitude = flat.max()
        if magnitude < 1e-3:
            problems.append(f"{name} {output}: largest |value| is {magnitude:.2g}")
            continue
        relative = value.reshape(count, -1).std(axis=0) / magnitude
        stuck = relative[flat.max(axis=0) >= 0.01 * magnitude] < 1e-3
        if stuck.any():
            problems.append(f"{name} {output}: {int(stuck.sum())} of {relative.size} elements vary less than 1e-3 "
                            f"of the magnitude across samples (min {relative.min():.2g})")
        if family.kind == "classifier" and value.ndim == 2 and value.shape[1] > 1 and \
                len(np.unique(value.argmax(1))) < 3:
            problems.append(f"{name} {output}: top-1 takes only {len(np.unique(value.argmax(1)))} classes")
    return problems
