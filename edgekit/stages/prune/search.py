"""The accuracy / agreement budget: judging a pruned model against it, and searching for the most
compressed candidate ratio that stays inside it."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...errors import UserError
from .config import PruneConfig

if TYPE_CHECKING:
    from .job import Job


def search(job: Job):
    """Bisection over the sorted candidates for the most compressed ratio inside the budget.

    Quality falls as the ratio grows, so a candidate inside the budget means every smaller one is too.
    """
    config = job.config
    candidates = sorted(set(config.candidates))
    tried, results = [], {}
    inside, outside = -1, len(candidates)
    while outside - inside > 1:
        index = (inside + outside) // 2
        model, steps = job.compress(candidates[index])
        quality, stats = steps[-1]["quality"][-1], job.stats(model)
        ok = inside_budget(job, quality)
        tried.append({"ratio": candidates[index], "macs": stats["macs"], "parameters": stats["parameters"],
                      "float32_bytes": stats["float32_bytes"], **quality, "inside_budget": ok})
        results[index] = (model, steps)
        inside, outside = (index, outside) if ok else (inside, index)
    if inside < 0:
        shown = "; ".join(f"{t['ratio']}: {describe(job, t)}" for t in tried)
        raise UserError(f"no prune ratio stays inside the {budget_text(config)} (tried {shown}): loosen the "
                        f"budget or give smaller candidates, e.g. [0.05, 0.1]")
    model, steps = results[inside]
    report = {"strategy": "bisection over sorted candidates, each pruned and recovered",
              "budget": {"max_accuracy_drop": config.max_accuracy_drop, "min_agreement": config.min_agreement},
              "candidates": candidates, "tried": tried, "chosen": candidates[inside]}
    return model, steps, report


def inside_budget(job: Job, quality: dict[str, Any]) -> bool:
    config = job.config
    if config.max_accuracy_drop is not None:
        if job.original_accuracy - quality["accuracy"] > config.max_accuracy_drop + 1e-9:
            return False
    return config.min_agreement is None or quality["top1_agreement"] >= config.min_agreement


def describe(job: Job, quality: dict[str, Any]) -> str:
    parts = [f"agreement {quality['top1_agreement']:.2%}" if quality["top1_agreement"] is not None
             else f"cosine {quality['cosine']:.4f}"]
    if quality.get("accuracy") is not None:
        parts.insert(0, f"accuracy {quality['accuracy']:.2f}% vs {job.original_accuracy:.2f}%")
    return ", ".join(parts)


def budget_text(config: PruneConfig) -> str:
    parts = []
    if config.max_accuracy_drop is not None:
        parts.append(f"max accuracy drop {config.max_accuracy_drop} points")
    if config.min_agreement is not None:
        parts.append(f"min agreement {config.min_agreement:.2%}")
    return "budget: " + " and ".join(parts)
