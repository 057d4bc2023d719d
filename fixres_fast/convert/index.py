"""``NAME.index.tsv``: a header line, then one ``record<TAB>label<TAB>path`` line per record, in record order.

A file name may hold any character but NUL and '/', line breaks included, so the path column is
escaped: a backslash is written ``\\\\``, a tab ``\\t``, a newline ``\\n``, a carriage return ``\\r``,
and every other control character, DEL, U+0085, U+2028 and U+2029 (the rest of what
``str.splitlines`` breaks at), and a lone surrogate (a byte of the name that is not UTF-8) as
``\\uXXXX``. Lines are separated by ``\\n`` only. Read an index with :func:`read_index` only.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import UserError

HEADER = "record\tlabel\tpath\n"
_SHORT = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_NEEDS_ESCAPE = re.compile("[\\\\\x00-\x1f\x7f\x85\u2028\u2029\ud800-\udfff]")
_ESCAPED = re.compile(r"\\(\\|t|n|r|u[0-9a-f]{4})")
_LONG = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}


def escape_path(path: str) -> str:
    return _NEEDS_ESCAPE.sub(lambda m: _SHORT.get(m[0]) or f"\\u{ord(m[0]):04x}", path)


def unescape_path(text: str) -> str:
    return _ESCAPED.sub(lambda m: _LONG.get(m[1]) or chr(int(m[1][1:], 16)), text)


def index_line(record: int, label: int, path: str) -> str:
    return f"{record}\t{label}\t{escape_path(path)}\n"


def open_index(path: Path, mode: str = "w"):
    """The index file opened for writing ('w') or appending ('a'), with the encoding and line ends it needs."""
    return open(path, mode, encoding="utf-8", newline="\n")


def read_index(path: Path) -> tuple[np.ndarray, list[str]]:
    """(labels, source paths) of an index, in record order."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read the index {path}: {e}; re-run the conversion") from None
    lines = text.split("\n")
    if lines[0] + "\n" != HEADER or lines[-1] != "":
        raise UserError(f"{path} is not a complete index (expected the header {HEADER.strip()!r} and whole lines); "
                        "re-run the conversion")
    labels, paths = [], []
    for n, line in enumerate(lines[1:-1]):
        fields = line.split("\t")
        if len(fields) != 3 or fields[0] != str(n) or not fields[1].isdigit():
            raise UserError(f"{path}, line {n + 2}: expected 'record<TAB>label<TAB>path' for record {n}, "
                            f"found {line[:80]!r}; re-run the conversion")
        labels.append(int(fields[1]))
        paths.append(unescape_path(fields[2]))
    return np.array(labels, dtype=np.int64), paths
