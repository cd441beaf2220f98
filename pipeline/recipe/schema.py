"""A small declarative schema: every recipe key is checked here, so errors name the key path,
the bad value and what is allowed, and near-miss keys get a "did you mean" hint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..errors import OTCError
from ..registry import suggest


@dataclass
class Field:
    types: tuple
    default: Any = None
    required: bool = False
    choices: tuple | None = None  # or a Registry: its names at check time (plugins add entries)
    lo: float | None = None  # inclusive lower bound
    hi: float | None = None  # inclusive upper bound
    check: Callable[[Any], str | None] | None = None  # extra rule; returns a message or None
    help: str = ""

    def describe(self) -> str:
        if self.help:
            return self.help
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        names = "/".join(t.__name__ for t in self.types)
        if self.lo is not None or self.hi is not None:
            return f"a {names} in [{self.lo}, {self.hi}]"
        return f"a {names}"


def _type_ok(value, types) -> bool:
    if isinstance(value, bool) and bool not in types:
        return False  # TOML true is not a number
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        return True
    return isinstance(value, types)


def fail(where: str, path: str, msg: str):
    raise OTCError(f"{where}: {path}: {msg}")


def check_table(table: Any, spec: dict[str, Field], where: str, path: str) -> dict:
    """Validate one TOML table against a spec; return it with defaults filled in."""
    if not isinstance(table, dict):
        fail(where, path or "<top>", f"expected a table, got {type(table).__name__} {table!r}")
    out = {}
    for key, value in table.items():
        kpath = f"{path}.{key}" if path else key
        if key not in spec:
            allowed = ", ".join(sorted(spec)) or "(none)"
            fail(where, kpath, f"unknown key{suggest(key, spec)} (allowed keys: {allowed})")
        out[key] = check_value(value, spec[key], where, kpath)
    for key, f in spec.items():
        if key not in out:
            if f.required:
                kpath = f"{path}.{key}" if path else key
                fail(where, kpath, f"missing required key; expected {f.describe()}")
            out[key] = f.default
    return out


def check_value(value: Any, f: Field, where: str, path: str) -> Any:
    if not _type_ok(value, f.types):
        fail(where, path, f"got {type(value).__name__} {value!r}; expected {f.describe()}")
    if f.choices is not None and value not in f.choices:
        fail(where, path, f"got {value!r}; expected {f.describe()}{suggest(value, f.choices)}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if f.lo is not None and value < f.lo:
            fail(where, path, f"got {value!r}; expected {f.describe()}")
        if f.hi is not None and value > f.hi:
            fail(where, path, f"got {value!r}; expected {f.describe()}")
    if f.check is not None:
        msg = f.check(value)
        if msg:
            fail(where, path, f"got {value!r}; {msg}")
    return value
