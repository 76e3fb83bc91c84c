"""Structured channel pruning through Torch-Pruning: importance, the layers kept whole, channel rounding.

Torch-Pruning's dependency graph removes the channels that a residual add or a depthwise convolution ties
together as one, and leaves a plain smaller `nn.Module`.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ...errors import UserError, first_line
from .config import BATCH
from .measure import count_macs, forward_all, outputs_of, predict

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
    ignored = [modules[name] for name in config.keep] + _output_layers(model, example)
    out_shapes = [tuple(out.shape) for out in forward_all(model, example)]
    if config.method == "taylor" and len(out_shapes) > 1:
        raise UserError(f"taylor importance follows the gradient of one class output, and {type(model).__name__} "
                        f"has {len(out_shapes)} outputs: prune with l1, l2 or bn")
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
        result = [tuple(out.shape) for out in forward_all(model, example)]
    except Exception as err:  # the user's model, cut by Torch-Pruning: either may raise anything
        raise UserError(f"Torch-Pruning could not prune {type(model).__name__} ({first_line(err)}): list "
                        f"the modules involved in prune.keep, or drop the prune ratio") from None
    finally:
        model.zero_grad(set_to_none=True)
    if result != out_shapes:
        raise UserError(f"pruning changed the output shapes of {type(model).__name__} from {out_shapes} to "
                        f"{result}: name its output layers in prune.keep")
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


def _output_layers(model, example) -> list:
    """The Conv and Linear layers whose outputs reach a model output with no other Conv or Linear between (a
    classifier's head; each head of a detector): pruning their channels would change the model's outputs.
    Found by walking the autograd graph back from every output."""
    import torch

    producers = {}

    def record(module, _inputs, output):
        producers[output.grad_fn] = module

    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.modules.conv._ConvNd))]
    hooks = [layer.register_forward_hook(record) for layer in layers]
    try:
        with torch.enable_grad():  # an input that wants gradients gives a graph even with frozen weights
            outputs = outputs_of(model(example.clone().requires_grad_(True)))
        pending = [out.grad_fn for out in outputs if out.grad_fn is not None]
    finally:
        for hook in hooks:
            hook.remove()
    found, seen = [], set()
    while pending:
        step = pending.pop()
        if step in seen:
            continue
        seen.add(step)
        if step in producers:
            found.append(producers[step])
        else:
            pending.extend(after for after, _ in step.next_functions if after is not None)
    return list(dict.fromkeys(found))  # a head called twice is found twice
