"""At the edge: files written atomically (a temporary name beside the target, fsync, rename), CSV and JSON
output, and the code revision saved beside results. Every job that writes files writes them through here,
so a reader never sees half a file, and an interrupted write leaves the old file (or none) in place."""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(path, mode: str = "wb", **kw):
    """open(PATH.partial, mode), flushed, synced and renamed to PATH when the block ends without an exception
    (removed where it raised)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    f = open(tmp, mode, **kw)
    try:
        yield f
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(tmp, path)
    except BaseException:
        f.close()
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path, data: bytes) -> None:
    with replacing(path, "wb") as f:
        f.write(data)


def write_text(path, text: str) -> None:
    with replacing(path, "w") as f:
        f.write(text)


def write_json(path, doc, indent: int | None = 2) -> None:
    """``doc`` as JSON (a newline at the end)."""
    write_text(path, json.dumps(doc, indent=indent) + "\n")


def write_csv(path, rows: list[dict], fields=None) -> None:
    """``rows`` as CSV with a header of ``fields`` (default: the first row's keys)."""
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=list(fields or rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    with replacing(path, "w", newline="") as f:
        f.write(buf.getvalue())


def torch_save(path, obj) -> None:
    import torch

    with replacing(path, "wb") as f:
        torch.save(obj, f)


def git_revision() -> str:
    """The commit this package's code is at, with "+dirty" where the work tree has changes; "unknown" outside git."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if rev.returncode:
        return "unknown"
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
