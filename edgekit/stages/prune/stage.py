"""prune(): check the inputs, compress a copy of the model (at the given ratio, or the searched one) and
report sizes, quality, recovery and search."""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ...errors import UserError
from .config import SEED, PruneConfig
from .job import Job
from .search import budget_text, describe, inside_budget, search


@dataclass
class PruneResult:
    module: Any  # the pruned torch.nn.Module, in eval mode
    report: dict[str, Any]  # JSON-able: sizes, quality, recovery, search


def prune(model, input_shape, config: PruneConfig, unlabeled: np.ndarray,
          evaluation: tuple[np.ndarray, np.ndarray | None]) -> PruneResult:
    """Prune and/or sparsify a copy of `model`; the original is left untouched and is the teacher."""
    import torch

    if not isinstance(model, torch.nn.Module) or isinstance(model, torch.jit.ScriptModule):
        raise UserError(f"pruning needs a plain torch.nn.Module, got {type(model).__name__}: load the model "
                        f"as `file.py:factory --weights W`, or drop the prune settings")
    eval_x, eval_y = evaluation
    input_shape = tuple(int(d) for d in input_shape)
    unlabeled = checked_data(unlabeled, input_shape, "unlabeled (calibration) data")
    eval_x = checked_data(eval_x, input_shape, "evaluation data")
    if config.ratio is None and config.sparsity is None and not config.has_budget and config.cluster is None:
        raise UserError("nothing to prune: set a ratio (--prune 0.5), a sparsity (--sparsity 0.5), clustering "
                        "(--cluster 16) or a budget (--max-accuracy-drop 1.0 / --min-agreement 0.98)")
    if config.max_accuracy_drop is not None and eval_y is None:
        raise UserError("max_accuracy_drop needs labeled evaluation data: pass labels (an .npz with x and y) "
                        "or use --min-agreement, which needs none")
    _check_keep(model, config.keep)
    if config.cluster and _version("scikit-learn") is None:
        raise UserError("weight sharing clusters with scikit-learn: pip install 'edgekit[prune]' (or scikit-learn)")
    structured = config.ratio is not None or config.searches_ratio
    if structured and _version("torch-pruning") is None:
        raise UserError("channel pruning needs Torch-Pruning: pip install 'edgekit[prune]' (or torch-pruning)")

    torch.manual_seed(SEED)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    teacher = copy.deepcopy(model).eval()
    job = Job(teacher, input_shape, config, unlabeled, eval_x, eval_y, device)
    report: dict[str, Any] = {
        "torch_pruning": _version("torch-pruning") if structured else None,
        "config": asdict(config),
        "data": {"unlabeled_images": len(unlabeled), "evaluation_images": len(eval_x),
                 "labels": eval_y is not None, "device": device.type},
        "original": {**job.stats(teacher), **job.quality(teacher)},
    }
    if config.searches_ratio:
        pruned, steps, report["search"] = search(job)
    else:
        pruned, steps = job.compress(config.ratio)
        final_quality = steps[-1]["quality"][-1]
        if config.has_budget and not inside_budget(job, final_quality):
            fix = ("raise cluster.clusters or cluster.fine_tune_steps" if config.ratio is None else
                   "lower the ratio, or drop it to let the search choose")
            raise UserError(f"{_asked(config)} ends outside the budget ({describe(job, final_quality)}; "
                            f"{budget_text(config)}): {fix}")
    report["steps"] = steps
    report["final"] = {**job.stats(pruned), **steps[-1]["quality"][-1]}
    report["macs_ratio"] = report["final"]["macs"] / report["original"]["macs"]
    return PruneResult(pruned.eval(), report)


def _asked(config: PruneConfig) -> str:
    """What was asked, in words: 'prune ratio 0.5', 'sparsity 0.5', 'clustering to 16 values'."""
    parts = [f"prune ratio {config.ratio}" if config.ratio is not None else None,
             f"sparsity {config.sparsity}" if config.sparsity else None,
             f"clustering to {config.cluster.clusters} values" if config.cluster else None]
    return " + ".join(p for p in parts if p)


def _check_keep(model, keep: list[str]) -> None:
    names = [name for name, _ in model.named_modules() if name]
    unknown = [name for name in keep if name not in names]
    if unknown:
        shown = ", ".join(names[:4] + ["..."] + names[-2:]) if len(names) > 6 else ", ".join(names)
        raise UserError(f"prune.keep names '{unknown[0]}', which is not a module of {type(model).__name__}: "
                        f"use names from model.named_modules(), e.g. {shown}")


def checked_data(x: np.ndarray, input_shape: tuple[int, ...], what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != len(input_shape) or tuple(x.shape[1:]) != input_shape[1:] or len(x) == 0:
        raise UserError(f"{what} has shape {x.shape}; pruning needs (N, {', '.join(map(str, input_shape[1:]))})")
    if not np.isfinite(x).all():
        raise UserError(f"{what} holds NaN or infinite values: clean the data before pruning")
    return x.astype(np.float32, copy=False)


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None
