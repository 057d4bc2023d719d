"""The steps the jobs share (train, adapt, evaluate, analysis): one AMP training step, the evaluation pass
over an exact epoch, softmax predictions, and the pooled vectors the classifier sees. Below every job; it
imports none of them."""
from __future__ import annotations

import math

import torch
from torch import nn

from . import progress
from .distributed import Dist, all_sum
from .models import classifier


def autocast(device_type: str, dtype: torch.dtype | None):
    """Mixed precision in ``dtype`` (bf16 or fp16), or plain float32 where ``dtype`` is None."""
    return torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None)


def train_step(model, inputs, labels, optimizer, criterion, dtype, scaler=None) -> torch.Tensor:
    """One optimisation step: forward and loss under autocast, one backward, exactly one optimizer step (through
    the GradScaler for fp16). ``inputs`` is a batch of images or a tuple of a model tail's inputs."""
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    with autocast(inputs[0].device.type, dtype):
        loss = criterion(model(*inputs), labels)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss.detach()


@torch.no_grad()
def evaluate_loader(model: nn.Module, loader, d: Dist, dtype: torch.dtype | None = None,
                    desc: str = "evaluate") -> tuple[float, float, float, int]:
    """(top-1 %, top-5 %, mean cross-entropy, images) of ``model`` on an evaluation loader (a bar named ``desc``),
    summed over the processes."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=d.device)  # correct@1, correct@5, loss
    n = 0
    for images, labels in progress.images(loader, desc, loader.epoch_length, enabled=d.main):
        with autocast(images.device.type, dtype):
            logits = model(images)
        logits = logits.float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit = top == labels[:, None]
        sums += torch.stack([hit[:, 0].sum(), hit.any(dim=1).sum(),
                             nn.functional.cross_entropy(logits, labels, reduction="sum")]).double()
        n += labels.shape[0]
    model.train(was_training)
    c1, c5, loss, total = all_sum([*sums.tolist(), n], d)
    total = max(total, 1)
    return 100 * c1 / total, 100 * c5 / total, loss / total, int(total)


@torch.no_grad()
def predict(model: nn.Module, loader, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(softmax probabilities float32 (N, classes), labels (N,)) on the CPU, in the loader's order."""
    probs, labels = [], []
    for images, y in loader:
        with autocast(images.device.type, dtype):
            logits = model(images)
        probs.append(logits.float().softmax(1).cpu())
        labels.append(y.cpu())
    return torch.cat(probs), torch.cat(labels)


def limited(batches, limit=None):
    """The first ``limit`` images (at least one batch) of a stream of (inputs, labels)."""
    seen = 0
    for inputs, labels in batches:
        yield inputs, labels
        seen += labels.shape[0]
        if limit is not None and seen >= limit:
            return


@torch.no_grad()
def pooled_features(model, loader, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(classifier inputs (N, C) on the CPU, labels): the vectors after global pooling (a forward pre-hook on the
    classifier, so after any Fréchet map attached before it), for the first ``limit`` images."""
    feats, labels = [], []
    hook = classifier(model).register_forward_pre_hook(lambda m, args: feats.append(args[0].float().cpu()))
    model.eval()
    try:
        for (x,), y in limited((((x,), y) for x, y in loader), limit):
            model(x)
            labels.append(y.cpu())
    finally:
        hook.remove()
    n = min(limit or math.inf, sum(len(y) for y in labels))
    return torch.cat(feats)[:n], torch.cat(labels)[:n]
