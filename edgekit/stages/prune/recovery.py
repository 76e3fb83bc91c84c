"""Winning back what pruning cost, on unlabeled images only: batch-norm recalibration and distillation from
the original model (the teacher)."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .config import BATCH, SEED
from .measure import outputs_of

if TYPE_CHECKING:
    from .job import Job

LEARNING_RATE = 3e-3


def recover(job: Job, model, after: str = "pruning", steps: int | None = None) -> dict[str, Any]:
    """Run the configured recoveries on `model` in order; what each did and the quality after each.
    `steps`: distillation steps (default: the config's recover_steps)."""
    steps = job.config.recover_steps if steps is None else steps
    quality = [{"after": after, **job.quality(model)}]
    ran = []
    for kind in job.config.recover:
        start = time.perf_counter()
        if kind == "bn":
            layers = recalibrate_bn(model, job.unlabeled)
            ran.append({"kind": "bn", "data": f"{len(job.unlabeled)} unlabeled images", "layers": layers})
        elif steps > 0:
            ran.append({"kind": "kd", **_distill(job, model, steps)})
        else:
            continue
        ran[-1]["seconds"] = round(time.perf_counter() - start, 2)
        quality.append({"after": kind, **job.quality(model)})
    return {"recovery": ran, "quality": quality}


def recalibrate_bn(model, images) -> int:
    """Re-estimate batch-norm running statistics as a plain average over `images` (no gradients)."""
    import torch

    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not layers:
        return 0
    momenta = [m.momentum for m in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average over all batches instead of an exponential one
    was_training = model.training
    model.train()
    with torch.no_grad():
        for start in range(0, len(images), BATCH):
            model(images[start:start + BATCH])
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum
    model.train(was_training)
    return len(layers)


def _distill(job: Job, student, steps: int) -> dict[str, Any]:
    """Knowledge distillation: KL between temperature-softened teacher and student outputs; for a model with
    several outputs (a detector's scores, boxes, landmarks), the mean over outputs of the squared error to the
    teacher's, each divided by the teacher output's variance so that no output's scale outweighs the others."""
    import torch
    import torch.nn.functional as F

    temperature, device = job.config.temperature, job.device
    generator = torch.Generator().manual_seed(SEED)
    teacher = job.teacher.to(device)
    student.to(device).train()
    optimizer = torch.optim.Adam(student.parameters(), lr=LEARNING_RATE)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    batch = min(BATCH, len(job.unlabeled))
    for _ in range(steps):
        index = torch.randint(len(job.unlabeled), (batch,), generator=generator)
        x = _augment(job.unlabeled[index], generator).to(device)
        with torch.no_grad():
            targets = outputs_of(teacher(x))
        outputs = outputs_of(student(x))
        if len(outputs) == 1:
            soft_targets = F.softmax(targets[0] / temperature, dim=1)
            log_probs = F.log_softmax(outputs[0] / temperature, dim=1)
            loss = F.kl_div(log_probs, soft_targets, reduction="batchmean") * temperature ** 2
        else:
            loss = sum(F.mse_loss(out, target) / (target.var() + 1e-8)
                       for out, target in zip(outputs, targets)) / len(outputs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    teacher.cpu()
    student.cpu()
    # Training moved the batch-norm statistics on augmented batches; settle them on the clean images.
    recalibrate_bn(student, job.unlabeled)
    return {"steps": steps, "batch": batch, "data": f"{len(job.unlabeled)} unlabeled images",
            "augment": "random shift up to 1/16 of the side, scale 0.9-1.1",
            "loss": (f"KL divergence at temperature {temperature}" if len(outputs) == 1 else
                     f"squared error per output over the teacher's variance, mean of {len(outputs)} outputs"),
            "temperature": temperature,
            "optimizer": f"Adam lr {LEARNING_RATE} cosine", "device": device.type,
            "final_loss": round(loss.item(), 5) if steps else None}


def _augment(x, generator):
    """Random shifts and mild scaling: 128 images would otherwise be memorized within a few hundred steps."""
    import torch
    import torch.nn.functional as F

    n = len(x)
    shift = 2.0 / 16  # in normalized coordinates [-1, 1]: 1/16 of the side
    scale = 0.9 + 0.2 * torch.rand(n, generator=generator)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = scale
    theta[:, :, 2] = (torch.rand(n, 2, generator=generator) * 2 - 1) * shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)
