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
    """A randomly initialised classifier with ``num_classes`` outputs: ours (``fixres_cnn``), else torchvision's
    ``arch``, else timm's (``timm/NAME`` picks timm; a pretrained tag, ``NAME.TAG``, picks its config)."""
    import torchvision

    from .pretrained import split_arch

    if num_classes < 1:
        raise UserError(f"a model needs at least one class, got {num_classes}")
    library, name, tag = split_arch(arch)
    if library == "fixres":
        return SMALL_ARCHS[name](num_classes)
    if library == "torchvision":
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    timm = _timm()
    if timm is not None and name in timm.list_models():
        try:
            return timm.create_model(f"{name}.{tag}" if tag else name, pretrained=False, num_classes=num_classes)
        except RuntimeError as e:  # an unknown pretrained tag
            raise UserError(f"timm has no pretrained tag {tag!r} for {name} ({e})") from None
    known = dict.fromkeys(architectures() + (timm.list_models() if timm is not None else []))  # both have resnet50
    close = difflib.get_close_matches(name, list(known), n=4)
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


SHORTCUTS = ("downsample", "shortcut", "skip")  # module names torchvision and timm give a residual's projection


def last_bn_before_pool(model: nn.Module) -> tuple[str, nn.BatchNorm2d]:
    """(name, module) of the last 2-d BatchNorm of the main path that runs before global pooling and the
    classifier (ResNet: ``layer4[-1].bn3``). A residual block runs its shortcut's projection after its main
    path, so where the last block has one (a single-block last stage), its BN is passed over."""
    bns = [(n, m) for n, m in execution_order(model) if isinstance(m, nn.BatchNorm2d)]
    if not bns:
        raise UserError(f"{type(model).__name__} has no BatchNorm2d before its global pooling, so there is no "
                        "last BN to adapt; adapt the classifier alone for this model")
    main = [(n, m) for n, m in bns if not set(n.split(".")) & set(SHORTCUTS)]
    return (main or bns)[-1]


# --- What adaptation tunes, and the frozen trunk cut off from it --------------------------------------

TUNE = ("fc", "bn+fc", "bn-stats", "last-stage")


def adaptation_mode(model: nn.Module, adapted) -> None:
    """FixRes fine-tuning (Sec. 4.2): only the ``adapted`` modules learn and run in train mode (a BN uses
    batch statistics); the rest is frozen in eval mode, so autograd records nothing before them."""
    model.requires_grad_(False).eval()
    for module in adapted:
        module.requires_grad_(True).train()


def final_stage(model: nn.Module, res: int = 224) -> dict[str, nn.Module]:
    """{name: module} of the layers with weights from the last change of spatial size on: those at the
    final feature-map size, and the head after pooling (ResNet: ``layer4`` from its strided conv, and fc)."""
    shapes, hooks = {}, []

    def record(name, output):  # returns None: a hook that returns a value replaces the output
        shapes.setdefault(name, tuple(output.shape[2:]) if torch.is_tensor(output) else None)

    for name, m in model.named_modules():
        if not list(m.children()) or isinstance(m, nn.modules.batchnorm._BatchNorm):
            hooks.append(m.register_forward_hook(lambda mod, i, o, name=name: record(name, o)))
    try:
        execution_order(model, res)  # runs the forward pass that fills `shapes`, in order
    finally:
        for h in hooks:
            h.remove()
    bn_name = last_bn_before_pool(model)[0]  # the final feature map is the one this BN normalises
    names = list(shapes)
    last = shapes[bn_name]
    start = names.index(bn_name)
    while start > 0 and (shapes[names[start - 1]] is None or shapes[names[start - 1]] == last
                         or len(shapes[names[start - 1]]) != 2):
        start -= 1
    modules = dict(model.named_modules())
    return {n: modules[n] for n in names[start:] if any(True for _ in modules[n].parameters(recurse=False))
            or isinstance(modules[n], nn.modules.batchnorm._BatchNorm)}


def tuned_modules(model: nn.Module, tune: str, bn_scope: str = "last", res: int = 224) -> dict[str, nn.Module]:
    """{name: module} that adaptation changes: 'fc' the classifier; 'bn+fc' the last BN before pooling and
    the classifier; 'bn-stats' the running statistics of that BN (``bn_scope='all'``: of every BN);
    'last-stage' the layers at the final feature-map size and the classifier."""
    if tune not in TUNE:
        raise UserError(f"unknown --tune {tune!r}; choose one of {', '.join(TUNE)}")
    named = {id(m): n for n, m in model.named_modules()}
    if tune == "bn-stats":
        if bn_scope == "all":
            bns = {n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
            if not bns:
                raise UserError(f"{type(model).__name__} has no BatchNorm layers whose statistics could be re-estimated")
            return bns
        return dict([last_bn_before_pool(model)])
    head = classifier(model)
    layers = {"fc": dict, "bn+fc": lambda: dict([last_bn_before_pool(model)]), "last-stage": lambda: final_stage(model, res)}[tune]()
    return {**layers, named[id(head)]: head}


class _Tracer(torch.fx.Tracer):
    """Traces through the model but keeps BatchNorms (timm fuses an activation into them) and the
    modules to cut at as single calls."""

    def __init__(self, keep: set):
        super().__init__()
        self.keep = keep

    def is_leaf_module(self, m, qualname):
        return (qualname in self.keep or isinstance(m, nn.modules.batchnorm._BatchNorm)
                or super().is_leaf_module(m, qualname))


def split_at(model: nn.Module, tuned: dict[str, nn.Module], res: int = 64):
    """(head, tail) with ``tail(*head(x)) == model(x)``: ``head`` is everything that runs before the first
    of the ``tuned`` modules, ``tail`` the rest (sharing the model's modules). ``head`` returns a tuple
    of the tensors ``tail`` needs, e.g. the last BN's input and the residual it is added to.
    None where torch.fx cannot trace the model (data-dependent control flow)."""
    from torch.fx.passes.split_module import split_module

    try:
        graph = _Tracer(set(tuned)).trace(model)
    except Exception:  # fx raises many types on untraceable code
        return None
    gm = torch.fx.GraphModule(model, graph)
    nodes = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
    cut = next((i for i, n in enumerate(nodes) if n.op == "call_module" and n.target in tuned), None)
    if not cut:
        return None
    part = {n: int(i >= cut) for i, n in enumerate(nodes)}
    split = split_module(gm, model, lambda n: part[n])
    head, tail = split.submod_0, split.submod_1

    def run_head(x):
        out = head(x)
        return out if isinstance(out, tuple) else (out,)

    p = next(model.parameters())
    was_training = model.training
    x = torch.randn(2, 3, res, res, device=p.device, dtype=p.dtype)
    with torch.no_grad():
        model.eval()
        same = torch.allclose(tail(*run_head(x)), model(x), atol=1e-4, rtol=1e-3)
    model.train(was_training)
    return (run_head, tail) if same else None


class SmallCNN(nn.Module):
    """A 7-layer conv-BN-ReLU net (about 0.4 M weights, 11 M multiply-adds at 32x32) ending, like the
    paper's networks, in a BatchNorm before global average pooling and a linear classifier. For the
    demo and the tests on CPU: it trains on 64-px images in seconds."""

    def __init__(self, num_classes: int, width: int = 16):
        super().__init__()
        w = (3, width, 2 * width, 2 * width, 4 * width, 4 * width, 8 * width, 8 * width)
        strides = (1, 2, 1, 2, 1, 2, 1)
        layers = []
        for c_in, c_out, s in zip(w, w[1:], strides):
            layers += [nn.Conv2d(c_in, c_out, 3, s, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w[-1], num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


#: Architectures defined here, found by build_model before torchvision and timm.
SMALL_ARCHS = {"fixres_cnn": SmallCNN}
