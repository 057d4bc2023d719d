"""Portable models out: ``fixres-fast export CKPT OUT_DIR``.

A timm model is written in timm's Hugging Face layout by timm's own :func:`timm.models.save_for_hf`:
``model.safetensors`` and ``config.json`` (``architecture``, ``num_classes``, ``label_names``, and a
``pretrained_cfg`` whose ``input_size`` and ``test_input_size`` are K_test, ``crop_pct`` and ``test_crop_pct`` K_test
/ K_test^image, with the checkpoint's mean, std and interpolation), so that
``timm.create_model("local-dir:OUT_DIR", pretrained=True)`` builds the adapted model offline and
``timm.data.resolve_data_config(model=...)`` gives its test resolution and preprocessing. An adapted model is
meant for K_test, so K_test is its ``input_size`` too; K_train is kept in ``fixres.json``.

Every model (torchvision's, ours, timm's) also gets ``model.pth`` (a plain state_dict, ``weights_only``-safe)
and ``fixres.json``: the architecture, classes, K_train, K_test and the test transform as torchvision's
``ImageClassification`` takes it (``resize_size`` = K_test^image, ``crop_size`` = K_test, ``interpolation``,
``mean``, ``std``), and how the model was adapted.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import checkpoint
from .artifacts import torch_save, write_json
from .errors import UserError

FILES = ("model.safetensors", "model.pth", "fixres.json")  # and config.json for timm models


@dataclass(frozen=True)
class ExportConfig:
    checkpoint: object  # a checkpoint path, or pretrained.Pretrained weights
    out: str
    overwrite: bool = False


def transform_of(meta: checkpoint.CheckpointMeta) -> dict:
    """The test transform of ``meta`` in torchvision's terms (ImageClassification's arguments) and timm's."""
    da = meta.test_da
    return {"resize_size": da.resize_short, "crop_size": da.k_test, "interpolation": da.interpolation,
            "mean": list(da.mean), "std": list(da.std), "crop_pct": round(da.k_test / da.resize_short, 6)}


def timm_data_config(meta: checkpoint.CheckpointMeta) -> dict:
    """timm's data config for the checkpoint at K_test. ``crop_pct`` is chosen so that timm's
    ``floor(K_test / crop_pct)`` is exactly our K_test^image."""
    da, t = meta.test_da, transform_of(meta)
    crop_pct = t["crop_pct"]
    if int(da.k_test / crop_pct) != da.resize_short:  # a fraction just above the integer: aim half a pixel past it
        crop_pct = da.k_test / (da.resize_short + 0.5)
    size = (3, da.k_test, da.k_test)
    return {"input_size": size, "test_input_size": size, "crop_pct": crop_pct, "test_crop_pct": crop_pct,
            "mean": tuple(da.mean), "std": tuple(da.std), "interpolation": da.interpolation, "crop_mode": "center"}


def export(cfg: ExportConfig, log=print) -> dict:
    """Write the checkpoint's model to ``cfg.out``; returns {'out', 'files', 'format'}."""
    import safetensors.torch

    from .models import build_model
    from .pretrained import split_arch

    doc = checkpoint.load(cfg.checkpoint, log=log)
    meta = checkpoint.meta_of(doc)
    if meta.frechet:
        raise UserError(f"{cfg.checkpoint} was adapted with --method frechet, whose equalisation (zeros kept, other "
                        "pooled values mapped) is no layer of the exported model; export a checkpoint adapted with "
                        "--method finetune")
    out = Path(cfg.out)
    clash = [f for f in (*FILES, "config.json") if (out / f).exists()]
    if clash and not cfg.overwrite:
        raise UserError(f"{out} already holds {', '.join(clash)}; pass --overwrite to replace them")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; pass a folder to export into")
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(meta.arch, meta.num_classes)
    checkpoint.load_weights(model, doc, cfg.checkpoint)
    model.eval()
    library = split_arch(meta.arch)[0]
    files = []
    if library == "timm":
        from timm.models import save_for_hf

        labels = {"label_names": list(meta.classes)} if meta.classes else {}
        save_for_hf(model, str(out), model_config=labels, safe_serialization=True, data_config=timm_data_config(meta))
        files += ["model.safetensors", "config.json"]
    else:
        tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
        safetensors.torch.save_file(tensors, str(out / "model.safetensors"))
        files.append("model.safetensors")
    torch_save(out / "model.pth", model.state_dict())
    info = {"arch": meta.arch, "library": library, "num_classes": meta.num_classes,
            "classes": None if meta.classes is None else list(meta.classes), "k_train": meta.k_train,
            "k_test": meta.k_test, "transform": transform_of(meta), "adaptation": meta.adaptation,
            "pretrained": meta.pretrained, "from": os.path.abspath(str(cfg.checkpoint))}
    write_json(out / "fixres.json", checkpoint.plain(info))
    files += ["model.pth", "fixres.json"]
    log(f"exported {meta.arch} (K_test {meta.k_test}, {meta.num_classes} classes) to {out}: {', '.join(files)}"
        + (f"; load it with timm.create_model('local-dir:{out}', pretrained=True)" if library == "timm" else ""))
    return {"out": str(out), "files": files, "format": "timm" if library == "timm" else "state_dict"}
