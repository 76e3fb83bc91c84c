"""The bundled example: real weights trained on scikit-learn's digits (UCI handwritten digits)."""
from pathlib import Path

EXAMPLE_DIR = Path(__file__).resolve().parent
FACTORY = "edgekit.example.model:make_model"
WEIGHTS = EXAMPLE_DIR / "weights.pt"
CALIB = EXAMPLE_DIR / "calib.npz"  # x: 128 training-split images
TEST = EXAMPLE_DIR / "test.npz"  # x, y: the held-out test split (360 images)
INPUT_SHAPE = (1, 1, 32, 32)
LABELS = [str(d) for d in range(10)]
# How an app turns a grayscale image into the model input (recorded in the manifest).
PREPROCESS = {"resize": [32, 32], "color": "grayscale", "scale": 1 / 255, "mean": [0.5], "std": [0.5],
              "layout": "NCHW"}
