"""Unstructured sparsity: the smallest conv/linear weights zeroed (torch.nn.utils.prune), recovered, made permanent."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .recovery import recover

if TYPE_CHECKING:
    from .job import Job

SPARSITY_NOTE = ("zeroed weights shrink the compressed package, not CPU time: dense kernels multiply "
                 "zeros as fast as any other number")


def sparsify(job: Job, model, amount: float) -> dict[str, Any]:
    """Zero `amount` of the weights of every conv/linear layer not in prune.keep, in place; the step's report."""
    import torch
    from torch.nn.utils import prune as torch_prune

    before = job.stats(model)
    kept = set(job.config.keep)
    targets = [m for name, m in model.named_modules()
               if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear))
               and name not in kept]
    for module in targets:
        torch_prune.l1_unstructured(module, "weight", amount=amount)
    # Recovery runs with the masks in place, so training cannot revive a zeroed weight.
    recovery = recover(job, model, after="sparsity")
    for module in targets:
        torch_prune.remove(module, "weight")
    zeros = sum(int((m.weight == 0).sum()) for m in targets)
    total = sum(m.weight.numel() for m in targets)
    return {"step": "sparsity", "amount": amount, "achieved": zeros / total, "weights": total,
            "before": before, "after": job.stats(model), "note": SPARSITY_NOTE, **recovery}
