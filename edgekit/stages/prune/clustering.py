"""Weight sharing (Deep Compression's weight clustering): each conv/linear layer's weights become K shared
values, found by k-means (scikit-learn), snapped to the layer's symmetric int8 grid (exact for a per-tensor
INT8 quantization of the layer as it is; the exporter's BatchNorm folding and per-channel quantizers rescale
each output channel, which still keeps at most K values per channel), then fine-tuned: the shared values (centroids) learn by distillation from the
original, each centroid's gradient the sum of its weights' gradients, and the sharing never breaks.

What it buys, honestly: the ONNX and TFLite files still store every weight densely, so their raw size does
not change; with K values per layer they compress far better (zstd, zip), which is what app stores and
over-the-air updates ship. It changes no latency.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import UserError
from .config import SEED, ClusterConfig
from .recovery import recover

if TYPE_CHECKING:
    from .job import Job

INT8_LEVELS = 127  # symmetric int8 grid: absmax / 127 per step
CLUSTER_NOTE = ("shared weights shrink the compressed package (zstd, zip), not the raw files or CPU time: "
                "runtimes store and multiply dense weights")


def cluster(job: Job, model, config: ClusterConfig) -> dict[str, Any]:
    """Share the weights of `model`'s conv/linear layers in place; the step's report."""
    import torch
    from torch.nn.utils import parametrize

    before = job.stats(model)
    layers = _layers(model, config)
    for module in layers.values():
        indices, centroids = _kmeans(module.weight.detach(), config.clusters)
        parametrize.register_parametrization(module, "weight", _shared_weights(indices, centroids), unsafe=True)
    # Only the shared values, biases and batch-norm parameters learn: a weight cannot leave its cluster.
    recovery = recover(job, model, after="clustering", steps=config.fine_tune_steps)
    for module in layers.values():
        shared = module.parametrizations.weight[0]
        with torch.no_grad():
            shared.centroids.copy_(_snap(shared.centroids))
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    unique = {name: int(torch.unique(module.weight).numel()) for name, module in layers.items()}
    recovery["quality"].append({"after": "snap to int8 grid", **job.quality(model)})
    return {"step": "cluster", "clusters": config.clusters, "layers": len(layers), "unique_values": unique,
            "before": before, "after": job.stats(model), "note": CLUSTER_NOTE, **recovery}


def _shared_weights(indices, centroids):
    """A parametrization module: the layer's weight is centroids[indices] (torch is imported lazily)."""
    import torch

    class SharedWeights(torch.nn.Module):
        """A parametrization: the layer's weight is centroids[indices]."""

        def __init__(self, indices, centroids):
            super().__init__()
            self.register_buffer("indices", indices)
            self.centroids = torch.nn.Parameter(centroids)

        def forward(self, original):
            return self.centroids[self.indices]

    return SharedWeights(indices, centroids)


def _layers(model, config: ClusterConfig) -> dict[str, Any]:
    import torch

    kinds = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)
    found = {name: m for name, m in model.named_modules() if isinstance(m, kinds)}
    unknown = [name for name in config.layers + config.keep if name not in found]
    if unknown:
        raise UserError(f"cluster names '{unknown[0]}', which is not a conv or linear layer of "
                        f"{type(model).__name__}: use names from model.named_modules()")
    chosen = config.layers or list(found)
    return {name: found[name] for name in chosen if name not in config.keep}


def _kmeans(weight, clusters: int):
    """(index of each weight's centroid, the centroids snapped to the int8 grid) of one layer."""
    import torch
    from sklearn.cluster import KMeans

    values = weight.cpu().numpy().reshape(-1, 1).astype(np.float64)
    count = min(clusters, len(np.unique(values)))
    # Linear initialization over the range (Deep Compression found it keeps the rare large weights).
    start = np.linspace(values.min(), values.max(), count).reshape(-1, 1)
    fitted = KMeans(n_clusters=count, init=start, n_init=1, random_state=SEED).fit(values)
    centroids = _snap(torch.from_numpy(fitted.cluster_centers_.ravel()).to(weight.dtype))
    indices = torch.from_numpy(fitted.labels_.astype(np.int64)).reshape(weight.shape)
    return indices, centroids


def _snap(centroids):
    """Centroids on the layer's symmetric int8 grid (absmax / 127 per step)."""
    import torch

    step = centroids.abs().max() / INT8_LEVELS
    return centroids if step == 0 else torch.round(centroids / step) * step
