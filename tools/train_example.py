"""Retrain the bundled example reproducibly: MobileNetV2-style net on scikit-learn's digits.

Writes edgekit/example/weights.pt (state_dict), calib.npz (x: 128 training images) and test.npz
(x, y: the held-out test split), already preprocessed: NCHW float32.

    pip install scikit-learn && python tools/train_example.py
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from edgekit.example import CALIB, PREPROCESS, TEST, WEIGHTS
from edgekit.example.model import make_model

SIZE = PREPROCESS["resize"]


def preprocess(images_0_16: np.ndarray) -> np.ndarray:
    """Digits are 8x8 with values 0..16: scale to 0..255, resize to 32x32 bilinearly, normalize."""
    pixels = torch.from_numpy(images_0_16.astype(np.float32) * (255.0 / 16.0))[:, None]
    pixels = F.interpolate(pixels, size=tuple(SIZE), mode="bilinear", align_corners=False)
    x = pixels * PREPROCESS["scale"]
    x = (x - PREPROCESS["mean"][0]) / PREPROCESS["std"][0]
    return x.numpy().astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    digits = load_digits()
    x_all, y_all = preprocess(digits.images), digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x_all, y_all, test_size=0.2, random_state=args.seed, stratify=y_all)
    # Calibration samples come from the training split, never from the held-out test split.
    calib_idx = np.random.RandomState(args.seed).choice(len(x_train), 128, replace=False)

    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=args.epochs * (len(x_train) // 64 + 1))
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(xt))
        for i in range(0, len(xt), 64):
            idx = order[i:i + 64]
            batch = xt[idx]
            # Light augmentation: shifts by up to 2 pixels.
            dx, dy = np.random.randint(-2, 3, size=2)
            batch = torch.roll(batch, shifts=(int(dy), int(dx)), dims=(2, 3))
            loss = F.cross_entropy(model(batch), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            acc = (model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean()
        print(f"epoch {epoch + 1:3d}  loss {loss.item():.4f}  test accuracy {acc * 100:.2f}%")

    torch.save(model.state_dict(), WEIGHTS)
    np.savez_compressed(CALIB, x=x_train[calib_idx])
    np.savez_compressed(TEST, x=x_test, y=y_test)
    print(f"wrote {WEIGHTS}, {CALIB} and {TEST}")


if __name__ == "__main__":
    main()
