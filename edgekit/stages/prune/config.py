"""What a compression run is asked to do (PruneConfig, ClusterConfig, validated on creation) and the fixed
settings it runs with."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ...errors import UserError

Method = Literal["l1", "l2", "bn", "taylor"]
Recovery = Literal["bn", "kd"]
SEED = 0
BATCH = 64


@dataclass(frozen=True)
class ClusterConfig:
    clusters: int = 16  # shared values per layer (K)
    layers: list[str] = field(default_factory=list)  # module names to cluster; empty: every conv/linear layer
    keep: list[str] = field(default_factory=list)  # module names never clustered
    fine_tune_steps: int = 200  # distillation steps that train the shared values; 0: none

    def __post_init__(self) -> None:
        if not 2 <= self.clusters <= 256:
            raise UserError(f"cluster clusters {self.clusters} is outside 2..256: give the number of shared "
                            f"values per layer, e.g. 16")
        if self.fine_tune_steps < 0:
            raise UserError(f"cluster fine_tune_steps {self.fine_tune_steps} must be 0 or more, e.g. 200")


@dataclass(frozen=True)
class DistillConfig:
    student: str  # `file.py:factory` (or `package.module:factory`) of the smaller network, untrained
    steps: int = 1000  # distillation steps
    temperature: float = 4.0
    data: str | None = None  # unlabeled images to learn from (like --calib); None: the calibration data

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise UserError(f"distill steps {self.steps} must be 1 or more, e.g. 1000")
        if self.temperature <= 0:
            raise UserError(f"distill temperature {self.temperature} must be positive, e.g. 4")


@dataclass(frozen=True)
class PruneConfig:
    # Fraction of channels removed from every prunable layer. The same ratio per layer, not one global
    # ranking: on the example a global ranking starved narrow layers and recovered 2 points worse.
    ratio: float | None = None
    method: Method = "l1"  # channel importance; taylor uses gradients of the distillation loss
    sparsity: float | None = None  # fraction of conv/linear weights zeroed (unstructured, permanent)
    recover: list[Recovery] = field(default_factory=lambda: ["bn", "kd"])
    recover_steps: int = 300
    temperature: float = 4.0
    keep: list[str] = field(default_factory=list)  # module names never pruned; the last Linear always is
    round_to: int = 1  # channel counts become multiples of this (8 suits arm64 SIMD kernels)
    max_accuracy_drop: float | None = None  # percentage points; needs labeled evaluation data
    min_agreement: float | None = None  # top-1 agreement with the original, 0..1; needs no labels
    candidates: list[float] = field(default_factory=lambda: [0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    cluster: ClusterConfig | None = None  # weight sharing after pruning and sparsity (set from the recipe's cluster)

    def __post_init__(self) -> None:
        if self.ratio is not None and not 0 < self.ratio < 1:
            raise UserError(f"prune ratio {self.ratio} is outside (0, 1): give the fraction of channels "
                            f"to remove, e.g. 0.5")
        if self.sparsity is not None and not 0 <= self.sparsity < 1:
            raise UserError(f"prune sparsity {self.sparsity} is outside [0, 1): give the fraction of "
                            f"weights to zero, e.g. 0.5")
        bad = [c for c in self.candidates if not 0 < c < 1]
        if bad or not self.candidates:
            raise UserError(f"prune candidates {self.candidates} must be ratios in (0, 1), e.g. [0.3, 0.5, 0.7]")
        if self.round_to < 1:
            raise UserError(f"prune round_to {self.round_to} must be 1 or more, e.g. 8")
        if self.recover_steps < 1:
            raise UserError(f"prune recover_steps {self.recover_steps} must be 1 or more, e.g. 300")
        if self.temperature <= 0:
            raise UserError(f"prune temperature {self.temperature} must be positive, e.g. 4")
        if self.max_accuracy_drop is not None and self.max_accuracy_drop < 0:
            raise UserError(f"max_accuracy_drop {self.max_accuracy_drop} must be >= 0 percentage points")
        if self.min_agreement is not None and not 0 < self.min_agreement <= 1:
            raise UserError(f"min_agreement {self.min_agreement} must be a fraction in (0, 1], e.g. 0.98")

    @property
    def has_budget(self) -> bool:
        return self.max_accuracy_drop is not None or self.min_agreement is not None

    @property
    def searches_ratio(self) -> bool:
        """A budget and no ratio: search the pruning ratio (not when the budget is for clustering alone)."""
        return self.ratio is None and self.has_budget and self.cluster is None
