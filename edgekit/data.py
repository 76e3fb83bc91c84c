"""Calibration and evaluation inputs: .npy / .npz arrays or folders of images.

Every array is checked against the model's input spec (shape, dtype, finite values) when it is loaded,
and its value range against the declared preprocessing and the other data set, so bad data fails
before any conversion starts.
"""
from __future__ import annotations

import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import UserError
from .recipe import Preprocess, Recipe
from .spec import TensorSpec

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
RANDOM_CALIB_SAMPLES, RANDOM_EVAL_SAMPLES = 32, 8
HELD_OUT_FRACTION = 0.2
MIN_HELD_OUT = 32  # fewer held-out samples than this make a weak gate: the build says so
# How far values may reach outside the range they should span, in widths of that range: beyond RANGE_WARN the
# build warns (augmentation overshoot stays well below it), beyond RANGE_REFUSE the data was prepared another
# way (0-255 pixels against [-1, 1] reach 127 widths out; [0, 1] against ImageNet normalization about 2).
RANGE_WARN, RANGE_REFUSE = 0.5, 10.0


@dataclass
class Dataset:
    inputs: dict[str, np.ndarray]  # input name -> (N, *input shape without batch)
    labels: np.ndarray | None  # (N,) class indices, when known
    source: str  # where it came from, in words, for the manifest

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def take(self, index: np.ndarray | slice, source: str) -> "Dataset":
        labels = None if self.labels is None else self.labels[index]
        return Dataset({k: v[index] for k, v in self.inputs.items()}, labels, source)


@dataclass
class BuildData:
    calibration: Dataset
    evaluation: Dataset  # held out: never used for calibration
    range_warnings: list[str] = field(default_factory=list)  # values that look prepared unlike the model expects

    def warnings(self) -> list[str]:
        count = len(self.evaluation)
        if count >= MIN_HELD_OUT:
            return self.range_warnings
        return [*self.range_warnings,
                f"parity runs on only {count} held-out sample{'s' * (count != 1)} (fewer than {MIN_HELD_OUT}): "
                f"a gate on so few proves little. Give --eval with {MIN_HELD_OUT} or more samples (labeled, to "
                f"measure accuracy), or more --calib data (its last {HELD_OUT_FRACTION:.0%} is held out)"]


def load_build_data(recipe: Recipe, specs: list[TensorSpec]) -> BuildData:
    calib = recipe.calibration
    if calib.data is None and not calib.random:
        raise UserError("no calibration data: pass --calib PATH (.npy, .npz or a folder of images) "
                        "or, to quantize with random inputs anyway, --random-calib (recorded in the manifest)")
    if calib.data is None:
        rng = np.random.default_rng(0)
        note = "random normal inputs (requested with --random-calib); accuracy is not measured"
        return BuildData(_random(specs, RANDOM_CALIB_SAMPLES, rng, f"calibration: {note}"),
                         _random(specs, RANDOM_EVAL_SAMPLES, rng, f"evaluation: {note}"))
    calibration = load(calib.data, specs, recipe.preprocess)
    range_warnings = _against_preprocessing(calibration, calib.data, recipe.preprocess)
    if recipe.eval:
        evaluation = load(recipe.eval, specs, recipe.preprocess)
        range_warnings += _against_preprocessing(evaluation, recipe.eval, recipe.preprocess)
        range_warnings += _against_each_other(calibration, calib.data, evaluation, recipe.eval)
    else:
        if len(calibration) < 2:
            raise UserError(f"{calib.data} holds {len(calibration)} sample: parity needs held-out samples, "
                            f"so give at least 2 or pass --eval PATH")
        held_out = max(1, int(round(len(calibration) * HELD_OUT_FRACTION)))
        cut = len(calibration) - held_out
        evaluation = calibration.take(slice(cut, None), f"{calib.data} (last {held_out} samples, held out)")
        calibration = calibration.take(slice(0, cut), f"{calib.data} (first {cut} samples)")
    if len(calibration) > calib.samples:
        calibration = calibration.take(slice(0, calib.samples),
                                       f"{calibration.source}, first {calib.samples} samples")
    return BuildData(calibration, evaluation, range_warnings)


def _declared_range(preprocess: Preprocess) -> tuple[float, float]:
    """The values the preprocessing makes of 8-bit pixels, over all channels."""
    mean, std = np.asarray(preprocess.mean, np.float64), np.asarray(preprocess.std, np.float64)
    ends = np.concatenate([-mean / std, (255 * preprocess.scale - mean) / std])
    return float(ends.min()), float(ends.max())


def _against_preprocessing(data: Dataset, path: str, preprocess: Preprocess | None) -> list[str]:
    """Arrays (image folders go through the preprocessing itself) against the range the declared
    preprocessing makes of 8-bit images: a UserError far outside it, warnings nearer."""
    if preprocess is None or Path(path).is_dir():
        return []
    expected = _declared_range(preprocess)
    notes = []
    for name, array in data.inputs.items():
        if array.ndim != 4 or not np.issubdtype(array.dtype, np.floating):
            continue  # not a float image input: the preprocessing does not describe it
        found = _span(array)
        outside = _outside(found, expected)
        where = (f"{path}: input '{name}' spans {_shown(found)}, but the declared preprocessing makes "
                 f"{_shown(expected)} of 8-bit images")
        warning = _judged(outside, where, "normalize the arrays as `preprocess:` says ((pixels * scale - mean) / "
                          "std), like training, or give a folder of images instead",
                          "check that the arrays are normalized like training")
        if warning:
            notes.append(warning)
        elif found[1] - found[0] < (expected[1] - expected[0]) / RANGE_REFUSE:
            notes.append(f"{where}: the data covers a tiny part of it (normalized twice?); check its preprocessing")
    return notes


def _against_each_other(calibration: Dataset, calib_path: str, evaluation: Dataset, eval_path: str) -> list[str]:
    """Calibration and --eval data should span about the same range: if one reaches far outside the other's,
    one of them was prepared differently (e.g. max 255 against max 1)."""
    notes = []
    for name, array in calibration.inputs.items():
        if not np.issubdtype(array.dtype, np.floating):
            continue
        ours, theirs = _span(array), _span(evaluation.inputs[name])
        outside = max(_outside(ours, theirs), _outside(theirs, ours))
        where = (f"calibration data {calib_path} spans {_shown(ours)} for input '{name}' but the --eval data "
                 f"{eval_path} spans {_shown(theirs)}")
        warning = _judged(outside, where, "one of them is preprocessed differently; prepare both exactly like the "
                          "model's training data", "check that both are preprocessed like the model's training data")
        if warning:
            notes.append(warning)
    return notes


def _judged(outside: float, where: str, refused_fix: str, warned_fix: str) -> str | None:
    """Refuse data reaching more than RANGE_REFUSE widths outside its expected range; a warning past
    RANGE_WARN; None within it."""
    if outside > RANGE_REFUSE:
        raise UserError(f"{where}: {refused_fix}")
    return f"{where}: {warned_fix}" if outside > RANGE_WARN else None


def _span(array: np.ndarray) -> tuple[float, float]:
    return float(array.min()), float(array.max())


def _outside(found: tuple[float, float], expected: tuple[float, float]) -> float:
    """How far `found` reaches outside `expected`, in widths of `expected` (inf when that is one value)."""
    beyond = max(found[1] - expected[1], expected[0] - found[0], 0.0)
    width = expected[1] - expected[0]
    return beyond / width if width > 0 else (np.inf if beyond > 0 else 0.0)


def _shown(span: tuple[float, float]) -> str:
    return f"[{span[0]:.3g}, {span[1]:.3g}]"


def load(path_text: str, specs: list[TensorSpec], preprocess: Preprocess | None) -> Dataset:
    path = Path(path_text)
    if path.is_dir():
        return _load_images(path, specs, preprocess or Preprocess())
    if not path.is_file():
        raise UserError(f"data {path} does not exist")
    if path.suffix == ".npy":
        if len(specs) != 1:
            raise UserError(f"{path}: the model has {len(specs)} inputs; give an .npz with one array per input "
                            f"({', '.join(s.name for s in specs)})")
        arrays, labels = {specs[0].name: _read_npy(path)}, None
    elif path.suffix == ".npz":
        arrays, labels = _read_npz(path, specs)
    else:
        raise UserError(f"data {path} must be an .npy or .npz file or a folder of images")
    return Dataset({s.name: _checked(arrays[s.name], s, path) for s in specs}, _labels(labels, arrays, path),
                   str(path))


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:  # pickled objects, a truncated or foreign file
        raise UserError(f"cannot read {path} as a NumPy array: {err}") from None


def _read_npz(path: Path, specs: list[TensorSpec]) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            contents = {k: archive[k] for k in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise UserError(f"cannot read {path} as a NumPy .npz archive: {err}") from None
    labels = contents.pop("y", None)
    if len(specs) == 1 and specs[0].name not in contents:
        candidates = [k for k in ("x", "input", "inputs", "images") if k in contents] or list(contents)
        if len(candidates) != 1:
            raise UserError(f"{path}: cannot tell which array is the input: name it 'x' "
                            f"(found {', '.join(contents) or 'no arrays'})")
        contents = {specs[0].name: contents[candidates[0]]}
    missing = [s.name for s in specs if s.name not in contents]
    if missing:
        raise UserError(f"{path} has no array for input '{missing[0]}' (found {', '.join(contents)})")
    return contents, labels


def _checked(array: np.ndarray, spec: TensorSpec, path: Path) -> np.ndarray:
    sample_shape = tuple(spec.shape[1:])
    if array.ndim != len(spec.shape) or tuple(array.shape[1:]) != sample_shape:
        raise UserError(f"{path}: data for input '{spec.name}' has shape {tuple(array.shape)}, expected "
                        f"(N, {', '.join(map(str, sample_shape))}) for the model input {tuple(spec.shape)}")
    if len(array) == 0:
        raise UserError(f"{path}: data for input '{spec.name}' is empty")
    if not np.issubdtype(array.dtype, np.number):
        raise UserError(f"{path}: data for input '{spec.name}' has dtype {array.dtype}, expected numbers")
    if np.issubdtype(array.dtype, np.integer) and np.issubdtype(np.dtype(spec.dtype), np.floating):
        raise UserError(f"{path}: data for input '{spec.name}' is {array.dtype} (values {array.min()}..{array.max()}, "
                        f"raw pixels?) but the model takes {spec.dtype}: divide by 255 and normalize like training, "
                        f"or declare `preprocess:` and give a folder of images (if the model really takes these "
                        f"values, save them as float32)")
    array = array.astype(spec.dtype, copy=False)
    if np.issubdtype(array.dtype, np.floating):
        bad = ~np.isfinite(array)
        if bad.any():
            samples = np.unique(np.nonzero(bad.reshape(len(array), -1))[0])
            raise UserError(f"{path}: data for input '{spec.name}' contains {int(bad.sum())} NaN/Inf values "
                            f"(in {len(samples)} samples, first at index {samples[0]}): clean the data")
    return array


def _labels(labels: np.ndarray | None, arrays: dict, path: Path) -> np.ndarray | None:
    if labels is None:
        return None
    count = len(next(iter(arrays.values())))
    if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{path}: labels 'y' must be {count} integer class indices, got shape "
                        f"{labels.shape} dtype {labels.dtype}")
    return labels.astype(np.int64)


def _load_images(folder: Path, specs: list[TensorSpec], preprocess: Preprocess) -> Dataset:
    if len(specs) != 1:
        raise UserError(f"{folder}: image folders feed single-input models only")
    spec = specs[0]
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if classes:
        files = [(f, label) for label, name in enumerate(classes)
                 for f in sorted((folder / name).iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    else:
        files = [(f, -1) for f in sorted(folder.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise UserError(f"{folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    batch = np.stack([image_to_array(f, spec, preprocess) for f, _ in files])
    labels = np.array([label for _, label in files], dtype=np.int64) if classes else None
    return Dataset({spec.name: _checked(batch, spec, folder)}, labels, f"{folder} ({len(files)} images)")


def image_to_array(path: Path, spec: TensorSpec, preprocess: Preprocess) -> np.ndarray:
    """One image file -> one model input sample, exactly as the manifest's preprocessing says."""
    from PIL import Image, UnidentifiedImageError

    channels_first = preprocess.layout == "NCHW"
    height, width = spec.shape[2:4] if channels_first else spec.shape[1:3]
    channels = spec.shape[1] if channels_first else spec.shape[3]
    color = preprocess.color or ("grayscale" if channels == 1 else "rgb")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its pixel limit and twice it, then decodes: refuse there too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image = image.convert("L" if color == "grayscale" else "RGB")
                size = preprocess.resize or [height, width]
                image = image.resize((size[1], size[0]), Image.BILINEAR)
                pixels = np.asarray(image, dtype=np.float32)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise UserError(f"image {path} has more than {Image.MAX_IMAGE_PIXELS / 1e6:.0f} million pixels (a "
                        f"decompression bomb, or far larger than any model input): resize it to about the model's "
                        f"input size") from None
    except (UnidentifiedImageError, OSError) as err:
        raise UserError(f"cannot read image {path}: {err}") from None
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    pixels = (pixels * preprocess.scale - np.asarray(preprocess.mean, np.float32)) / np.asarray(preprocess.std, np.float32)
    return pixels.transpose(2, 0, 1) if channels_first else pixels


def _random(specs: list[TensorSpec], count: int, rng: np.random.Generator, source: str) -> Dataset:
    inputs = {s.name: rng.standard_normal((count, *s.shape[1:])).astype(s.dtype) for s in specs}
    return Dataset(inputs, None, source)
