"""Target profiles: everything that differs between devices, loaded from YAML and validated.

A profile is `targets/<name>.yaml` (shipped inside the package as `edgekit/profiles/`) or any
YAML file given by path. `extends: <name>` merges a profile over another one.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from . import schema
from .errors import UserError

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # one path component, never '.' or '..'
# ssh://[user@]host[:port]: host a DNS name, IPv4 or [IPv6]. Nothing ssh could read as an option or a shell
# could split: the runner may come from a shared profile or recipe.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
SSH_ADDRESS = re.compile(rf"ssh://(?:(?P<user>[A-Za-z0-9_][A-Za-z0-9._-]{{0,31}})@)?"
                         rf"(?:(?P<host>{_LABEL}(?:\.{_LABEL})*)|\[(?P<ipv6>[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*)\])"
                         rf"(?::(?P<port>[0-9]{{1,5}}))?")
LOCAL_RUNNERS = ("native", "docker", "qemu")
PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
DEFAULT_LIMITS = PROFILE_DIR / "defaults" / "tolerances.yaml"  # what every profile's parity limits start from
Precision = Literal["fp32", "fp16", "int8"]
QuantType = Literal["int8", "uint8"]
CalibrationMethod = Literal["minmax", "entropy", "percentile"]


@dataclass(frozen=True)
class Quantization:
    activation_type: QuantType = "int8"
    weight_type: QuantType = "int8"
    per_channel: bool = True
    activation_symmetric: bool = False
    weight_symmetric: bool = True
    # Use 7-bit weights: avoids saturation in u8s8 kernels on x86 CPUs without VNNI.
    reduce_range: bool = False
    calibration: CalibrationMethod = "minmax"
    percentile: float = 99.999
    op_types: list[str] = field(default_factory=list)  # operator types to quantize; empty: ONNX Runtime's default
    quantize_bias: bool = True  # False: bias stays float (TensorRT adds it in float itself)
    exclude_nodes: list[str] = field(default_factory=list)
    exclude_op_types: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Tolerance:
    """Limits one precision's artifacts must meet against the reference model (None: not checked)."""
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    max_mean_abs_error: float | None = None
    min_cosine: float | None = None
    min_snr_db: float | None = None  # pooled over the held-out samples
    min_worst_sample_snr_db: float | None = None  # the held-out sample with the lowest SNR
    min_top1_agreement: float | None = None
    min_iou: float | None = None  # probability maps thresholded at 0.5, pooled over the held-out samples
    min_worst_sample_iou: float | None = None  # the held-out sample whose map has the lowest IoU
    max_accuracy_drop: float | None = None  # percentage points, when labels are known


@dataclass(frozen=True)
class Runtime:
    # ONNX Runtime execution providers in preference order; the first one installed is used.
    onnxruntime_providers: list[str] = field(default_factory=lambda: ["CPUExecutionProvider"])
    threads: int = 1
    # The least capable CPU the artifacts ship to (edgekit.int8_kernels.FLOORS): it decides how INT8 is
    # computed when they are judged. Left out: avx2 for an x86_64 target, armv8 for arm64, gpu with `gpu:`.
    cpu_floor: str | None = None


@dataclass(frozen=True)
class Onnx:
    """ONNX artifacts; fp32 is also the hub every other artifact is made from."""
    precisions: list[Literal["fp32", "fp16", "int8"]] = field(default_factory=lambda: ["fp32", "int8"])


@dataclass(frozen=True)
class Float16:
    keep_io_types: bool = True  # float32 model inputs and outputs, so apps feed the same arrays
    # Operator types kept in float32 on top of the converter's own list (ops that overflow or lose accuracy).
    keep_float_ops: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Trtexec:
    """How the manifest's `trtexec` command builds a TensorRT engine on the device."""
    path: str = "trtexec"
    timing_cache: str = "timing.cache"
    workspace_mb: int | None = None
    extra_flags: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Gpu:
    """An NVIDIA GPU target: which ONNX Runtime providers count as the GPU, and how to get them."""
    providers: list[str] = field(default_factory=lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider"])
    install: str = "pip uninstall -y onnxruntime && pip install 'onnxruntime-gpu[cuda,cudnn]'"
    trtexec: Trtexec = field(default_factory=Trtexec)


@dataclass(frozen=True)
class TFLite:
    """TFLite artifacts (via onnx2tf); dynamic_int8 is judged with the int8 tolerances."""
    precisions: list[Literal["fp32", "fp16", "dynamic_int8", "int8"]] = field(
        default_factory=lambda: ["fp32", "fp16", "int8"])
    io_type: Literal["int8", "uint8", "float32"] = "int8"  # model I/O of the full-integer artifact


@dataclass(frozen=True)
class Pte:
    """ExecuTorch programs with the XNNPACK delegate, made from the PyTorch model (skipped for an ONNX source)."""
    precisions: list[Literal["fp32", "int8"]] = field(default_factory=lambda: ["fp32", "int8"])


@dataclass(frozen=True)
class Ort:
    """ONNX Runtime's ORT format (what its reduced-size mobile builds load), saved from the ONNX artifact of the
    same precision after ONNX Runtime's graph optimizations at this level."""
    precisions: list[Literal["fp32", "fp16", "int8"]] = field(default_factory=lambda: ["fp32", "int8"])
    optimization: Literal["basic", "extended", "all"] = "all"


@dataclass(frozen=True)
class Pruning:
    channel_multiple: int = 8  # pruned channel counts stay multiples of this (SIMD width / tensor-core tile)


@dataclass(frozen=True)
class Bench:
    """How `edgekit bench` and `build --bench` measure this target."""
    arch: Literal["arm64", "x86_64"] = "x86_64"  # which machine the docker/qemu runners emulate
    runner: str = "native"  # native | docker | qemu | ssh://user@host[:port]
    runs: int = 50
    warmup: int = 5
    remote_python: str = "python3"  # the device's Python for ssh:// runners (needs numpy and the runtime)


def ssh_address(runner: str, where: str) -> tuple[str, int | None]:
    """The destination ([user@]host) and port ssh is given for an ssh:// runner."""
    match = SSH_ADDRESS.fullmatch(runner)
    port = int(match["port"]) if match and match["port"] else None
    if not match or port is not None and not 1 <= port <= 65535:
        raise UserError(f"{where} {runner!r} is not an SSH destination: write ssh://[user@]host[:port] "
                        f"(user and host: letters, digits, '.', '_', '-', not starting with '-'; host may be "
                        f"[IPv6]; port 1-65535)")
    host = match["host"] or match["ipv6"]
    return (f"{match['user']}@{host}" if match["user"] else host), port


def check_runner(runner: str, where: str) -> None:
    if runner.startswith("ssh://"):
        ssh_address(runner, where)
    elif runner not in LOCAL_RUNNERS:
        raise UserError(f"{where}: unknown runner {runner!r}: use native, docker, qemu or ssh://[user@]host[:port]")


def check_counts(where: str, counts: dict[str, int | None]) -> None:
    """Runs, warm-up runs, samples, threads, steps: whole numbers of 1 or more (None: not given)."""
    for key, value in counts.items():
        if value is not None and value < 1:
            raise UserError(f"{where}: {key} is {value}: give a whole number of 1 or more")


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    opset: int = 18
    formats: list[str] = field(default_factory=lambda: ["onnx"])  # names in edgekit.formats; settings under each
    onnx: Onnx = field(default_factory=Onnx)
    quantization: Quantization = field(default_factory=Quantization)
    float16: Float16 = field(default_factory=Float16)
    tflite: TFLite = field(default_factory=TFLite)
    pte: Pte = field(default_factory=Pte)
    ort: Ort = field(default_factory=Ort)
    gpu: Gpu | None = None
    runtime: Runtime = field(default_factory=Runtime)
    bench: Bench = field(default_factory=Bench)
    pruning: Pruning = field(default_factory=Pruning)
    tolerances: dict[str, Tolerance] = field(default_factory=dict)
    # Per kind of output (edgekit.output_kinds: probability, distribution, logits, values), then per output
    # name, per precision: limits that replace the precision's own key by key; null turns a limit off.
    kind_tolerances: dict[str, dict[str, dict[str, float | None]]] = field(default_factory=dict)
    output_tolerances: dict[str, dict[str, dict[str, float | None]]] = field(default_factory=dict)
    extends: str | None = None
    source: str = ""

    def __post_init__(self):
        if not SAFE_NAME.fullmatch(self.name):
            raise UserError(f"{self.source or 'profile'}: target name {self.name!r} must be one plain folder name "
                            f"(letters, digits, '.', '_', '-'; not starting with '.' or '-'): it names OUT/<name>")
        where = self.source or self.name
        from .formats import FORMATS  # the registry's stages import this module

        unknown = [name for name in self.formats if name not in FORMATS]
        if unknown:
            raise UserError(f"{where}: unknown format '{unknown[0]}' in 'formats' (edgekit makes "
                            f"{', '.join(FORMATS)})")
        check_counts(where, {"bench.runs": self.bench.runs, "bench.warmup": self.bench.warmup,
                             "runtime.threads": self.runtime.threads})
        check_runner(self.bench.runner, f"{where}: bench.runner")
        self._resolve_cpu_floor(where)
        known = {f.name for f in dataclasses.fields(Tolerance)}
        for section in ("kind_tolerances", "output_tolerances"):
            for name, precisions in getattr(self, section).items():
                for precision, limits in precisions.items():
                    unknown = sorted(set(limits) - known)
                    if unknown:
                        raise UserError(f"{self.source or self.name}: unknown key '{section}.{name}.{precision}."
                                        f"{unknown[0]}' (allowed here: {', '.join(sorted(known))})")

    def _resolve_cpu_floor(self, where: str) -> None:
        from .int8_kernels import FLOORS, default_floor

        floor = self.runtime.cpu_floor or default_floor(self.bench.arch, self.gpu is not None)
        if floor not in FLOORS:
            raise UserError(f"{where}: runtime.cpu_floor {floor!r} is not a CPU floor edgekit knows: use one of "
                            f"{', '.join(FLOORS)}")
        arch = FLOORS[floor][0]
        if arch and arch != self.bench.arch:
            raise UserError(f"{where}: runtime.cpu_floor {floor!r} is an {arch} CPU but bench.arch is "
                            f"{self.bench.arch}: name a floor of that architecture")
        object.__setattr__(self, "runtime", dataclasses.replace(self.runtime, cpu_floor=floor))

    def tolerance(self, precision: str) -> Tolerance:
        if precision not in self.tolerances:
            raise UserError(f"target '{self.name}' ({self.source}) has no tolerances for {precision}: "
                            f"add 'tolerances: {{{precision}: ...}}' to the profile")
        return self.tolerances[precision]

    def output_tolerance(self, precision: str, output: str, kind: str) -> Tolerance:
        """The limits one output of one precision is judged by: the precision's, then its kind's, then its name's."""
        limits = dataclasses.asdict(self.tolerance(precision))
        limits.update(self.kind_tolerances.get(kind, {}).get(precision, {}))
        limits.update(self.output_tolerances.get(output, {}).get(precision, {}))
        return Tolerance(**limits)


def available() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def load(name_or_path: str) -> Target:
    """Load a built-in target by name, or a profile YAML file by path."""
    data, source = _read(name_or_path, seen=())
    if "name" not in data:
        data["name"] = Path(source).stem
    return schema.build(Target, {**data, "source": source}, where=source)


def builtin_name(target: Target) -> str | None:
    """The built-in profile `target` was loaded from (convert's derived profiles included), or None for a file."""
    path = Path(target.source)
    return path.stem if path.parent == PROFILE_DIR and path.is_file() else None


def for_build(recorded_builtin: str | None, named: str | None, folder: str) -> Target:
    """The profile a finished build is checked and benched by: the one the user names, else the built-in
    profile its manifest names. Never the profile copy inside the folder: a build folder may come from
    anywhere, and its runner, commands and tolerances must not decide how it is judged or what runs."""
    if named:
        return load(named)
    if recorded_builtin and recorded_builtin in available():
        return load(recorded_builtin)
    raise UserError(f"{folder} was not built with a built-in profile: name the profile to judge it by with "
                    f"--target NAME or --target path/to/profile.yaml")


def _read(name_or_path: str, seen: tuple[str, ...]) -> tuple[dict, str]:
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = PROFILE_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise UserError(f"unknown target '{name_or_path}': choose one of {', '.join(available())} "
                            f"(`edgekit targets` lists them) or give the path of a profile .yaml")
    elif not path.is_file():
        raise UserError(f"target profile {path} does not exist")
    source = str(path)
    if source in seen:
        raise UserError(f"{source}: 'extends' forms a loop ({' -> '.join(seen + (source,))})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{source} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"{source}: a target profile must be a mapping of keys to values")
    parent = data.get("extends")
    if parent is None:
        return schema.deep_merge(yaml.safe_load(DEFAULT_LIMITS.read_text()), data), source
    # A sibling file of that name, else the built-in one: a local arm64.yaml may extend the built-in arm64.
    base_path = path.parent / f"{parent}.yaml"
    sibling = base_path.is_file() and base_path.resolve() != path.resolve()
    base, _ = _read(str(base_path) if sibling else str(parent), seen + (source,))
    base.pop("name", None)
    base.pop("description", None)
    return schema.deep_merge(base, data), source
