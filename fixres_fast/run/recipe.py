"""Recipes (``pipelines/NAME.toml``): found by name or path, overridden with ``--set key=value``, and each table
checked against the job's own config dataclass, so that an unknown key or a wrong type is one line naming the key
and the ones allowed. The stages a recipe makes, and running them, are in :mod:`fixres_fast.run`."""
from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path

from ..errors import UserError

PACKAGE = Path(__file__).resolve().parent.parent  # fixres_fast/
#: Where shipped recipes are looked for: beside the package (a source checkout, ``pip install -e .``), and inside it
#: (a wheel: setup.py maps pipelines/ to fixres_fast/pipelines).
PIPELINES = (PACKAGE.parent / "pipelines", PACKAGE / "pipelines")


def shipped() -> dict[str, Path]:
    """{name: path} of the recipes shipped with the package."""
    found = {}
    for folder in reversed(PIPELINES):
        found.update({p.stem: p for p in sorted(folder.glob("*.toml"))})
    return dict(sorted(found.items()))


def locate(recipe: str) -> Path:
    """A recipe file: ``recipe`` itself where it is a file, else the shipped recipe of that name."""
    path = Path(recipe)
    if path.is_file():
        return path
    name = path.name.removesuffix(".toml")
    known = shipped()
    if path.parent == Path(".") and name in known:
        return known[name]
    raise UserError(f"no recipe {recipe!r}: expected a .toml file or the name of a shipped recipe "
                    f"({', '.join(known) or 'none found'})")


def read(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path} is not valid TOML: {e}") from None
    except OSError as e:
        raise UserError(f"cannot read the recipe {path}: {e.strerror}") from None


def value_of(text: str):
    """A --set value as TOML reads it (2, 0.1, true, [32, 64], {128 = [256, 192]}, "x"); else the text itself."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_sets(doc: dict, sets: typing.Iterable[str]) -> dict:
    """``doc`` with each ``a.b.c=value`` set (tables made where missing); a table value replaces the table."""
    for item in sets:
        key, eq, text = item.partition("=")
        parts = key.strip().split(".")
        if not eq or not all(parts):
            raise UserError(f"--set expects KEY=VALUE with a dotted key such as train.recipe.epochs=2, got {item!r}")
        table = doc
        for i, part in enumerate(parts[:-1]):
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise UserError(f"--set {item}: {'.'.join(parts[:i + 1])} is a value, not a table")
        table[parts[-1]] = value_of(text.strip())
    return doc


# --- Checking a table against a config dataclass --------------------------------------------------------


def _describe(hint) -> str:
    args = typing.get_args(hint)
    if _is_union(hint):
        return " or ".join(_describe(a) for a in args if a is not type(None))
    if typing.get_origin(hint) is tuple:
        return f"a list of {_plural(args[0])}" if len(args) == 2 and args[1] is Ellipsis else \
            f"a list of {len(args)} {_plural(args[0])}"
    if typing.get_origin(hint) is list:
        return f"a list of {_plural(args[0])}"
    if typing.get_origin(hint) is dict:
        return f"a table of {_plural(args[1])}"
    if dataclasses.is_dataclass(hint):
        return "a table"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, "a value")


def _plural(hint) -> str:
    if typing.get_origin(hint) in (list, tuple):
        return "lists of " + _plural(typing.get_args(hint)[0])
    return {int: "integers", float: "numbers", str: "strings", bool: "true or false"}.get(hint, _describe(hint) + "s")


def _is_union(hint) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


class _Mismatch(Exception):
    pass


def conform(value, hint, where: str):
    """``value`` (as TOML read it) as the type ``hint`` wants (lists become tuples where a tuple is wanted, tables
    dataclasses); raises UserError naming ``where`` where it cannot be."""
    try:
        return _conform(value, hint, where)
    except _Mismatch:
        raise UserError(f"{where}: expected {_describe(hint)}, got {value!r}") from None


def _conform(value, hint, where):
    if hint in (object, typing.Any):
        return value
    if _is_union(hint):
        for arm in typing.get_args(hint):
            try:
                return _conform(value, arm, where)
            except _Mismatch:
                pass
        raise _Mismatch
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (tuple, list):
        if not isinstance(value, list) or (origin is tuple and args[-1] is not Ellipsis and len(value) != len(args)):
            raise _Mismatch
        arms = [args[0]] * len(value) if origin is list or args[-1] is Ellipsis else args
        return origin(_conform(v, a, where) for v, a in zip(value, arms))
    if origin is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        return {k: _conform(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise _Mismatch
        return hint(**check_table(value, hint, where))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool):
        raise _Mismatch
    if isinstance(hint, type) and isinstance(value, hint):
        return value
    raise _Mismatch


def fields_of(config) -> dict:
    """{field name: type} of a config dataclass."""
    hints = typing.get_type_hints(config)
    return {f.name: hints[f.name] for f in dataclasses.fields(config)}


def check_table(table: dict, config=None, where: str = "", own: dict | None = None, exclude=()) -> dict:
    """``table``'s values conformed to ``config``'s fields (less ``exclude``, which the run sets) and the stage's
    ``own`` keys ({name: type}); an unknown key is a UserError naming the keys allowed."""
    if not isinstance(table, dict):
        raise UserError(f"{where} must be a table ([{where}]), got {table!r}")
    allowed = {k: v for k, v in (fields_of(config) if config else {}).items() if k not in exclude}
    allowed.update(own or {})
    unknown = [k for k in table if k not in allowed]
    if unknown:
        raise UserError(f"unknown key {where}.{unknown[0]}; allowed: {', '.join(sorted(allowed)) or 'none'}")
    return {k: conform(v, allowed[k], f"{where}.{k}") for k, v in table.items()}
