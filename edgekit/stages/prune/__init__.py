"""Stage: make a PyTorch model smaller before ONNX export, then win back what that cost.

Structured pruning removes whole channels with Torch-Pruning's dependency graph (channels), unstructured
sparsity zeroes single weights and makes them permanent (sparsity), weight sharing clusters each layer's
weights into K shared values (clustering), and a smaller network of the user's (a student) can learn the
original instead (student). Recovery re-estimates batch-norm statistics and distils the original model
into the compressed one on the unlabeled calibration images (recovery). With an accuracy or agreement budget and no ratio, a search picks the most compressed
candidate ratio that stays inside it (search). stage.prune() ties them together over one Job.
"""
from .config import ClusterConfig, DistillConfig, PruneConfig
from .measure import count_macs
from .stage import PruneResult, prune
from .student import distill_student

__all__ = ["ClusterConfig", "DistillConfig", "PruneConfig", "PruneResult", "count_macs", "distill_student", "prune"]
