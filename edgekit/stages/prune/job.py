"""One prune() call's shared state (teacher, data, reference outputs, settings), its measurements, and the
steps that compress a copy of the teacher."""
from __future__ import annotations

import copy
import zlib
from typing import Any

import numpy as np

from ...errors import UserError
from ...parity import output_metrics
from .channels import prune_channels
from .clustering import cluster
from .config import PruneConfig
from .measure import count_macs, predict_all
from .recovery import recover
from .sparsity import sparsify


class Job:
    """Everything one prune() call shares: the teacher, the data, its reference outputs, the settings."""

    def __init__(self, teacher, input_shape, config: PruneConfig, unlabeled, eval_x, eval_y, device):
        import torch

        self.teacher, self.input_shape, self.config, self.device = teacher, input_shape, config, device
        self.unlabeled = torch.from_numpy(np.ascontiguousarray(unlabeled, dtype=np.float32))
        self.eval_x = torch.from_numpy(np.ascontiguousarray(eval_x, dtype=np.float32))
        self.eval_y = None if eval_y is None else np.asarray(eval_y).astype(np.int64).reshape(-1)
        self.reference = predict_all(teacher, self.eval_x)
        self.original_accuracy = self._accuracy(self.reference[0])
        if config.min_agreement is not None and self.quality(teacher)["top1_agreement"] is None:
            raise UserError("min_agreement compares top-1 classes, and the model's first output has no class axis: "
                            "drop the budget, or give max_accuracy_drop with labels")

    def stats(self, model) -> dict[str, Any]:
        params = [p.detach().cpu().float().numpy().ravel() for p in model.parameters()]
        raw = np.concatenate(params).astype(np.float32).tobytes()
        return {"macs": count_macs(model, self.input_shape), "parameters": sum(p.size for p in params),
                "float32_bytes": len(raw), "zlib_bytes": len(zlib.compress(raw, 6))}

    def quality(self, model) -> dict[str, Any]:
        outputs = predict_all(model, self.eval_x)
        metrics = [output_metrics(reference, output) for reference, output in zip(self.reference, outputs)]
        # Top-1 and accuracy from the first output (a classifier's); cosine: the worst output's.
        result = {"top1_agreement": metrics[0].get("top1_agreement"), "cosine": min(m["cosine"] for m in metrics)}
        if len(metrics) > 1:
            result["output_cosines"] = [m["cosine"] for m in metrics]
        if self.eval_y is not None:
            result["accuracy"] = self._accuracy(outputs[0])
        return result

    def _accuracy(self, logits: np.ndarray) -> float | None:
        if self.eval_y is None:
            return None
        return round(100.0 * float((logits.argmax(1) == self.eval_y).mean()), 4)

    def compress(self, ratio: float | None):
        """Structured pruning at `ratio`, then sparsity, then weight sharing, each followed by recovery."""
        model, steps = copy.deepcopy(self.teacher), []
        if ratio is not None:
            before = self.stats(model)
            prune_channels(self, model, ratio)
            steps.append({"step": "prune", "ratio": ratio, "method": self.config.method,
                          "round_to": self.config.round_to, "before": before, "after": self.stats(model),
                          **recover(self, model)})
        if self.config.sparsity:
            steps.append(sparsify(self, model, self.config.sparsity))
        if self.config.cluster:
            steps.append(cluster(self, model, self.config.cluster))
        if not steps:
            raise UserError("nothing to prune: prune ratio is unset, sparsity is 0 and no clustering is asked")
        return model.eval(), steps
