"""Structured channel pruning through Torch-Pruning: importance, the layers kept whole, channel rounding.

Torch-Pruning's dependency graph removes the channels that a residual add or a depthwise convolution ties
together as one, and leaves a plain smaller `nn.Module`.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ...errors import UserError, first_line
from .config import BATCH
from .measure import count_macs, forward, predict

if TYPE_CHECKING:
    from .job import Job


def prune_channels(job: Job, model, ratio: float) -> None:
    """Remove `ratio` of the channels of every prunable layer of `model`, in place."""
    import torch
    import torch_pruning as tp

    config = job.config
    example = torch.randn(job.input_shape)
    importance = {"l1": lambda: tp.importance.MagnitudeImportance(p=1),
                  "l2": lambda: tp.importance.MagnitudeImportance(p=2),
                  "bn": tp.importance.BNScaleImportance,
                  "taylor": tp.importance.TaylorImportance}[config.method]()
    modules = dict(model.named_modules())
    ignored = [modules[name] for name in config.keep] + _output_layers(model)
    out_shape = tuple(forward(model, example).shape)
    try:
        pruner = nearest_rounding_pruner()(model, example, importance=importance, pruning_ratio=ratio,
                                           global_pruning=False, ignored_layers=ignored,
                                           round_to=config.round_to if config.round_to > 1 else None)
    except Exception as err:  # Torch-Pruning traces the user's model: either may raise anything
        raise UserError(f"Torch-Pruning cannot trace {type(model).__name__} ({first_line(err)}): list the "
                        f"modules it trips on in prune.keep, or drop the prune ratio") from None
    if config.method == "taylor":
        _taylor_gradients(job, model)
    before = count_macs(model, job.input_shape)
    try:
        pruner.step()
        result = forward(model, example)
    except Exception as err:  # the user's model, cut by Torch-Pruning: either may raise anything
        raise UserError(f"Torch-Pruning could not prune {type(model).__name__} ({first_line(err)}): list "
                        f"the modules involved in prune.keep, or drop the prune ratio") from None
    finally:
        model.zero_grad(set_to_none=True)
    if tuple(result.shape) != out_shape:
        raise UserError(f"pruning changed the output shape of {type(model).__name__} from {out_shape} to "
                        f"{tuple(result.shape)}: name its output layer in prune.keep")
    if count_macs(model, job.input_shape) >= before:
        raise UserError(f"Torch-Pruning traced no removable channel in {type(model).__name__} at ratio {ratio} "
                        f"(it follows autograd, so a forward that leaves torch, e.g. via numpy or .detach(), "
                        f"hides its layers): keep the forward in torch ops, shorten prune.keep, or raise the ratio")


def nearest_rounding_pruner():
    """Torch-Pruning's BasePruner with edgekit's channel rounding (a factory: torch_pruning loads lazily)."""
    import torch_pruning as tp

    class NearestRoundingPruner(tp.pruner.BasePruner):
        """Rounds each kept channel count to the nearest multiple of round_to, never below one multiple.

        Torch-Pruning rounds it down: 24 channels at ratio 0.5 would keep 8, not 16, and on the example
        that cost about half a point of recovered accuracy. `_round_to` is Torch-Pruning's private hook
        (tests/test_library_contracts.py fails if its parameters change or BasePruner stops calling it).
        """

        def _round_to(self, n_pruned, current_channels, round_to):
            kept = max(round_to, math.floor((current_channels - n_pruned) / round_to + 0.5) * round_to)
            return max(current_channels - kept, 0)

    return NearestRoundingPruner


def _taylor_gradients(job: Job, model) -> None:
    """Gradients of the hard-target distillation loss (cross-entropy with the teacher's top-1).

    The soft KL loss is exactly zero with zero gradient while the student still equals the teacher.
    """
    import torch

    model.eval().zero_grad()
    targets = predict(job.teacher, job.unlabeled).argmax(1)
    for start in range(0, len(job.unlabeled), BATCH):
        logits = model(job.unlabeled[start:start + BATCH])
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(targets[start:start + BATCH]),
                                                 reduction="sum") / len(job.unlabeled)
        loss.backward()


def _output_layers(model) -> list:
    """The classifier head: the last Linear, or the last convolution of a model without one."""
    import torch

    for kind in (torch.nn.Linear, torch.nn.modules.conv._ConvNd):
        layers = [m for m in model.modules() if isinstance(m, kind)]
        if layers:
            return [layers[-1]]
    return []
