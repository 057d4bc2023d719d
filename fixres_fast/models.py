"""Models by name (torchvision, then timm), and the layers FixRes adapts.

FixRes fine-tunes the classifier and the last BatchNorm before global pooling (Sec. 4.2); for a
ResNet that is ``layer4[-1].bn3``. :func:`last_bn_before_pool` finds it for any model by running a
tiny input through it and keeping the last 2-d BatchNorm that executes, so it works for torchvision
and timm models alike, and fails with a clear message where there is none.
"""
from __future__ import annotations

import difflib

import torch
from torch import nn

from .errors import UserError


def _timm():
    try:
        import timm
    except ImportError:
        return None
    return timm


def architectures() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def build_model(arch: str, num_classes: int) -> nn.Module:
    """A randomly initialised classifier with ``num_classes`` outputs: torchvision's ``arch``, else timm's."""
    import torchvision

    if num_classes < 1:
        raise UserError(f"a model needs at least one class, got {num_classes}")
    if arch in architectures():
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    timm = _timm()
    name = arch.removeprefix("timm/")
    if timm is not None and name in timm.list_models():
        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    known = architectures() + (timm.list_models() if timm is not None else [])
    close = difflib.get_close_matches(arch, known, n=4)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    where = "torchvision or timm" if timm is not None else "torchvision (timm is not installed)"
    raise UserError(f"unknown architecture {arch!r}: not a model name in {where}{hint}")


def classifier(model: nn.Module) -> nn.Linear:
    """The final linear layer (ResNet ``fc``, timm ``get_classifier()``, torchvision ``classifier``/``head``)."""
    if hasattr(model, "get_classifier") and isinstance(model.get_classifier(), nn.Linear):
        return model.get_classifier()
    for name in ("fc", "classifier", "head", "heads"):
        layer = getattr(model, name, None)
        if isinstance(layer, nn.Sequential):
            layer = next((m for m in reversed(layer) if isinstance(m, nn.Linear)), None)
        if isinstance(layer, nn.Linear):
            return layer
    raise UserError(f"cannot find the classifier of {type(model).__name__}: expected a final nn.Linear "
                    "named fc, classifier or head")


def execution_order(model: nn.Module, res: int = 224) -> list[tuple[str, nn.Module]]:
    """Leaf modules (and BatchNorms, which timm wraps with their activation) in the order a forward
    pass of one image at ``res`` runs them (eval mode, no gradients)."""
    order, hooks = [], []
    for name, m in model.named_modules():
        if not list(m.children()) or isinstance(m, nn.modules.batchnorm._BatchNorm):
            hooks.append(m.register_forward_hook(lambda mod, i, o, name=name: order.append((name, mod))))
    was_training = model.training
    p = next(model.parameters())
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, res, res, device=p.device, dtype=p.dtype))
    except Exception as e:  # a model that cannot take this input size, say
        raise UserError(f"cannot trace {type(model).__name__} on a {res}x{res} input to find its layers "
                        f"({type(e).__name__}: {e})") from None
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return order


def last_bn_before_pool(model: nn.Module) -> tuple[str, nn.BatchNorm2d]:
    """(name, module) of the last 2-d BatchNorm that runs before global pooling and the classifier."""
    bns = [(n, m) for n, m in execution_order(model) if isinstance(m, nn.BatchNorm2d)]
    if not bns:
        raise UserError(f"{type(model).__name__} has no BatchNorm2d before its global pooling, so there is no "
                        "last BN to adapt; adapt the classifier alone for this model")
    return bns[-1]
