"""Evaluation: top-1 / top-5 over an exact epoch (every image once), summed over processes."""
from __future__ import annotations

import torch
from torch import nn

from .distributed import Dist, all_sum


@torch.no_grad()
def evaluate_loader(model: nn.Module, loader, d: Dist, dtype: torch.dtype | None = None) -> tuple[float, float, float, int]:
    """(top-1 %, top-5 %, mean cross-entropy, images) of ``model`` on an evaluation loader."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=d.device)  # correct@1, correct@5, loss
    n = 0
    for images, labels in loader:
        with torch.autocast(images.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
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
