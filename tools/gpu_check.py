"""The GPU checks of the loaders, trainer and profile issues, as one script for a lent H100/H200.

Here (no GPU):   .venv/bin/python tools/gpu_check.py prepare        # records into .gpu/records
There:           PYTHONPATH=. python3 tools/gpu_check.py run --out $OUT   (carry .gpu)

The GPU machine has torch, torchvision, timm, click and matplotlib but neither DALI nor FFCV, so the
loader checks use the torch backend's nvJPEG path. Each part runs as its own process with a time
limit; what each printed goes to OUT/<part>.log and a summary to OUT/gpu_check.json.

Measured on an H200 on 2026-11-26 (docs/BENCHMARKS.md): env, loaders, train_throughput, profile_fp32,
profile_bf16, train_e2e. The loader and trainer targets, with the records grown 4x on the machine
(`grow`, so an epoch holds 12 batches of 256) and the earlier torch loader beside the current one
(`git show 0881800:fixres_fast/loaders/torch.py > .gpu/torch_old.py` here first), about 8 minutes:
    cp .gpu/torch_old.py fixres_fast/loaders/torch_old.py && PYTHONPATH=. python3 tools/gpu_check.py run --out $OUT --only env,grow,parity,train_eager,train_eager_b512,nvjpeg,loaders_train160,loaders_test224,train_fed,train_compiled=200
(train_e2e trains the checkpoint that adapt_e2e adapts.)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECORDS = ROOT / ".gpu" / "records"
BIG = Path("/tmp/records_big")  # made on the GPU machine by `grow`
PY = sys.executable


def prepare(n_train: int, n_val: int) -> None:
    """ImageNet-like JPEGs (500x375, some 375x500) from the real photos, converted to RecordIO only."""
    sys.path.insert(0, str(ROOT))
    import random
    import shutil

    from PIL import Image

    from fixres_fast.convert import ConvertConfig, convert
    from fixres_fast.sampledata import photos

    src = ROOT / ".gpu" / "src"
    shutil.rmtree(src, ignore_errors=True)
    rng = random.Random(0)
    pics = [Image.open(p).convert("RGB") for p in photos()]
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            im = pics[i % len(pics)]
            w, h = im.size
            s = rng.uniform(0.6, 1.0)
            box = (rng.uniform(0, w * (1 - s)), rng.uniform(0, h * (1 - s)))
            im = im.crop((*box, box[0] + w * s, box[1] + h * s)).resize((500, 375) if i % 4 else (375, 500))
            d = src / split / f"c{i % 10}"
            d.mkdir(parents=True, exist_ok=True)
            im.save(d / f"{i}.jpg", quality=90)
    convert(ConvertConfig(layout="folder", src=str(src), out=str(RECORDS), formats=("recordio",), overwrite=True))
    shutil.rmtree(src)


def grow(factor: int) -> None:
    """BIG: the records' train images ``factor`` times each (the same bytes), and val once."""
    sys.path.insert(0, str(ROOT))
    import json
    import shutil

    from fixres_fast.convert import ConvertConfig, convert
    from fixres_fast.loaders.source import open_source

    src = Path("/tmp/grow_src")
    shutil.rmtree(src, ignore_errors=True)
    for split, copies in (("train", factor), ("val", 1)):
        records = open_source(RECORDS, split)
        for i in range(len(records)):
            d = src / split / f"c{records.labels[i]}"
            d.mkdir(parents=True, exist_ok=True)
            for c in range(copies):
                (d / f"{i}_{c}.jpg").write_bytes(records.read(i).tobytes())
    convert(ConvertConfig(layout="folder", src=str(src), out=str(BIG), formats=("recordio",), overwrite=True))
    print({k: v["count"] for k, v in json.loads((BIG / "manifest.json").read_text())["splits"].items()})


def parity() -> None:
    """The torch loader on CUDA against the same loader on the CPU: test DA at 224, and train DA's shape."""
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch

    from fixres_fast.loaders import make_loader
    from fixres_fast.spec import make_spec

    def epoch(device, mode, res):
        loader = make_loader("torch", make_spec(mode, res), str(BIG), "val", batch_size=64, device=device, workers=8)
        images, labels = zip(*[(x.float().cpu(), y.cpu()) for x, y in loader])
        return torch.cat(images), torch.cat(labels), images[0]

    gpu, gpu_labels, first = epoch("cuda", "test", 224)
    cpu, cpu_labels, _ = epoch("cpu", "test", 224)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
    diff = ((gpu - cpu) * std).abs()
    print(f"test DA 224, {len(gpu)} images: labels equal {torch.equal(gpu_labels, cpu_labels)}; "
          f"mean |gpu - cpu| {diff.mean():.2f} grey levels, 99th percentile {np.percentile(diff.numpy(), 99):.1f}")
    train, _, first = epoch("cuda", "train", 160)
    print(f"train DA 160: {tuple(train.shape)}, channels_last {first.is_contiguous(memory_format=torch.channels_last)}")


def parts(out: Path) -> dict[str, list[str]]:
    data = str(RECORDS)
    big = str(BIG)
    return {
        "grow": [PY, "tools/gpu_check.py", "grow"],
        "parity": [PY, "tools/gpu_check.py", "parity"],
        "train_eager": [PY, "tools/bench_train.py", "--arch", "resnet50", "--res", "128,160,224,288", "--batch-size",
                        "256", "--steps", "30", "--warmup", "10", "--device", "cuda", "--amp", "bf16", "--backends",
                        "synthetic", "--json", str(out / "train_eager.json")],
        "train_eager_b512": [PY, "tools/bench_train.py", "--arch", "resnet50", "--res", "128", "--batch-size", "512",
                             "--steps", "20", "--warmup", "5", "--device", "cuda", "--amp", "bf16", "--backends",
                             "synthetic"],
        "nvjpeg": [PY, "tools/bench_nvjpeg.py", big, "--mode", "train", "--res", "160", "--batch", "256",
                   "--also", "fixres_fast.loaders.torch_old"],
        "loaders_train160": [PY, "tools/bench_loaders.py", big, "--device", "cuda", "--backends", "torch",
                             "--modes", "train", "--res", "160", "--batch", "256", "--epochs", "3"],
        "loaders_test224": [PY, "tools/bench_loaders.py", big, "--device", "cuda", "--backends", "torch",
                            "--modes", "test", "--res", "224", "--batch", "256", "--epochs", "3"],
        "train_fed": [PY, "tools/bench_train.py", "--data", big, "--arch", "resnet50", "--res", "128,160,224",
                      "--batch-size", "256", "--steps", "30", "--warmup", "10", "--device", "cuda", "--amp", "bf16",
                      "--backends", "synthetic,torch", "--json", str(out / "train_fed.json")],
        "env": ["bash", "-c", f"nvidia-smi; nproc; {PY} -c 'import torch, torchvision; print(torch.__version__, "
                "torchvision.__version__, torch.cuda.get_device_name(0), torch.cuda.is_bf16_supported())'"],
        "loaders": [PY, "tools/bench_loaders.py", data, "--device", "cuda", "--backends", "torch",
                    "--modes", "train,test", "--res", "160,224", "--batch", "256", "--epochs", "3", "--workers", "8"],
        "train_throughput": [PY, "tools/bench_train.py", "--data", data, "--arch", "resnet50", "--res",
                             "128,160,224,288", "--batch-size", "256", "--steps", "30", "--warmup", "10",
                             "--device", "cuda", "--amp", "bf16", "--backends", "synthetic,torch", "--workers", "8",
                             "--json", str(out / "train_throughput.json")],
        "profile_fp32": [PY, "-m", "fixres_fast.cli", "profile", "--arch", "resnet50", "--res",
                         "64,128,160,224,288,384,448", "--batch-size", "32", "--device", "cuda", "--amp", "off",
                         "--channels-last", "--out", str(out / "profile_fp32")],
        "profile_bf16": [PY, "-m", "fixres_fast.cli", "profile", "--arch", "resnet50", "--res",
                         "64,128,160,224,288,384,448", "--batch-size", "32", "--device", "cuda", "--amp", "bf16",
                         "--channels-last", "--out", str(out / "profile_bf16")],
        "train_compiled": [PY, "tools/bench_train.py", "--arch", "resnet50", "--res", "128,224", "--batch-size", "256",
                           "--steps", "30", "--warmup", "15", "--device", "cuda", "--amp", "bf16", "--backends",
                           "synthetic", "--compile", "--json", str(out / "train_compiled.json")],
        "profile_bf16_b128": [PY, "-m", "fixres_fast.cli", "profile", "--arch", "resnet50", "--res",
                              "64,128,224,288,448", "--batch-size", "128", "--device", "cuda", "--amp", "bf16",
                              "--channels-last", "--out", str(out / "profile_bf16_b128")],
        "train_e2e": [PY, "-m", "fixres_fast.cli", "train", "--data", data, "--out", "/tmp/gpu_train", "--arch",
                      "resnet50", "--res", "160", "--epochs", "2", "--batch-size", "256", "--backend", "torch",
                      "--device", "cuda", "--amp", "bf16", "--eval-res", "224", "--workers", "8"],
        "adapt_e2e": [PY, "-m", "fixres_fast.cli", "adapt", "--checkpoint", "/tmp/gpu_train/last.pt", "--test-res", "224",
                      "--batch-size", "256", "--backend", "torch", "--device", "cuda", "--amp", "bf16", "--workers", "8",
                      "--out", "/tmp/gpu_train/adapted224.pt"],
    }


def run(out: Path, only: list[str], limit: int) -> None:
    """The parts named in ``only`` (each ``name`` or ``name=seconds``), in that order; all when empty."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "TQDM_MININTERVAL": "5"}
    known, summary = parts(out), {}
    for entry in only or list(known):
        name, _, seconds = entry.partition("=")
        t0 = time.perf_counter()
        try:
            done = subprocess.run(known[name], cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=int(seconds or limit))
            rc, text = done.returncode, done.stdout + done.stderr
        except subprocess.TimeoutExpired as e:
            rc, text = "timeout", (e.stdout or b"").decode() + (e.stderr or b"").decode()
        (out / f"{name}.log").write_text(text)
        summary[name] = {"rc": rc, "seconds": round(time.perf_counter() - t0, 1), "tail": text[-1500:]}
        print(f"== {name}: rc {rc}, {summary[name]['seconds']} s\n{text[-3000:]}", flush=True)
        (out / "gpu_check.json").write_text(json.dumps(summary, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["prepare", "run", "grow", "parity"])
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_out"))
    ap.add_argument("--only", default="", help="comma-separated parts to run, in order (name or name=seconds)")
    ap.add_argument("--limit", type=int, default=150, help="seconds per part")
    ap.add_argument("--train-images", type=int, default=768)
    ap.add_argument("--val-images", type=int, default=128)
    args = ap.parse_args()
    if args.action == "prepare":
        prepare(args.train_images, args.val_images)
    elif args.action == "grow":
        grow(4)
    elif args.action == "parity":
        parity()
    else:
        run(Path(args.out), [p for p in args.only.split(",") if p], args.limit)


if __name__ == "__main__":
    main()
