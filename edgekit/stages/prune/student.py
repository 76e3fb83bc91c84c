"""Distillation into a student: the user's own smaller network learns the original (the teacher) on
unlabeled images, with the recovery machinery of pruning (distillation, then batch-norm recalibration),
under the same budget flags. The trained student is what gets exported, quantized and verified."""
from __future__ import annotations

import copy
import dataclasses

import numpy as np

from ...errors import UserError
from .config import SEED, DistillConfig, PruneConfig
from .job import Job
from .recovery import recover
from .search import budget_text, describe, inside_budget
from .stage import PruneResult, checked_data


def distill_student(teacher, student, input_shape, config: DistillConfig, budget: PruneConfig,
                    unlabeled: np.ndarray, evaluation: tuple[np.ndarray, np.ndarray | None]) -> PruneResult:
    """Train a copy of `student` to match `teacher`; the report has the shape prune()'s has."""
    import torch

    input_shape = tuple(int(d) for d in input_shape)
    unlabeled = checked_data(unlabeled, input_shape, "distillation data")
    eval_x, eval_y = evaluation
    eval_x = checked_data(eval_x, input_shape, "evaluation data")
    if budget.max_accuracy_drop is not None and eval_y is None:
        raise UserError("max_accuracy_drop needs labeled evaluation data: pass labels (an .npz with x and y) "
                        "or use --min-agreement, which needs none")
    torch.manual_seed(SEED)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    settings = dataclasses.replace(budget, recover=["kd"], recover_steps=config.steps,
                                   temperature=config.temperature)
    job = Job(copy.deepcopy(teacher).eval(), input_shape, settings, unlabeled, eval_x, eval_y, device)
    trained = copy.deepcopy(student)
    _check_outputs(job, trained)
    before = job.stats(trained)
    recovery = recover(job, trained, after="untrained student")
    final = recovery["quality"][-1]
    if budget.has_budget and not inside_budget(job, final):
        raise UserError(f"the student {config.student} ends outside the budget ({describe(job, final)}; "
                        f"{budget_text(budget)}): give it more steps (distill.steps) or more capacity")
    original = {**job.stats(job.teacher), **job.quality(job.teacher)}
    after = job.stats(trained)
    report = {"config": {"student": config.student, "steps": config.steps, "temperature": config.temperature,
                         "ratio": None, "sparsity": None, "cluster": None},
              "data": {"unlabeled_images": len(unlabeled), "evaluation_images": len(eval_x),
                       "labels": eval_y is not None, "device": device.type},
              "original": original,
              "steps": [{"step": "distill", "student": config.student, "before": before, "after": after,
                         **recovery}],
              "final": {**after, **final}, "macs_ratio": after["macs"] / original["macs"]}
    return PruneResult(trained.eval(), report)


def _check_outputs(job: Job, student) -> None:
    """The student must answer with what the teacher answers: the same output shapes on the same input."""
    from .measure import predict_all

    probe = job.eval_x[:2]
    ours, theirs = ([out.shape for out in predict_all(model, probe)] for model in (student, job.teacher))
    if ours != theirs:
        raise UserError(f"the student's outputs have shapes {ours} and the teacher's {theirs}: distillation needs "
                        f"the same outputs (the same classes)")
