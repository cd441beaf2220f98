"""Recipes: TOML files (standard-library parser), overrides and plugins, with the top-level, [model] and [data]
tables checked and paths resolved. The stage list is checked by otcompress.plan (stage schemas and
contracts), which is what `run` reads."""

from __future__ import annotations

import hashlib
import importlib
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import OTCError
from .schema import Field, check_table, fail


def _shape_check(v):
    if len(v) < 2 or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in v):
        return "expected a list of positive integers such as [1, 3, 32, 32]"


def _floats_check(v):
    if not v or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        return "expected a non-empty list of numbers, one per input channel"


def _modules_check(v):
    if not all(isinstance(m, str) and re.fullmatch(r"[A-Za-z_][\w.]*", m) for m in v):
        return "expected a list of importable module names such as [\"my_plugins\"]"


def _name_check(v):
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v):
        return "expected letters, digits, '.', '_' or '-' (it names the output folder)"


MODEL_SPEC = {
    "arch": Field((str,), required=True, help="a built-in model name, 'torchvision:NAME', 'timm:NAME', 'hf:DIR' or "
                                              "'package.module:factory'"),
    "args": Field((dict,), default={}, help="a table of keyword arguments for the factory"),
    "checkpoint": Field((str,), help="a path to a .safetensors/.pt/.pth/.th file"),
    "trusted": Field((bool,), default=False, help="true only for a checkpoint you trust to run code: a whole-model "
                                                  "pickle (an ultralytics .pt) is loaded only then"),
    "input_shape": Field((list,), required=True, check=_shape_check, help="a list such as [1, 3, 32, 32]"),
}
DATA_SPEC = {
    "eval": Field((str,), help="a .npz file or an ImageFolder directory (or .tar/.tar.gz of one)"),
    "train": Field((str,), help="a .npz file or an ImageFolder directory (or .tar/.tar.gz of one)"),
    "calib": Field((str,), help="a .npz file or an ImageFolder directory (or .tar/.tar.gz of one); labels ignored"),
    "mean": Field((list,), check=_floats_check),
    "std": Field((list,), check=_floats_check),
    "limit": Field((int,), lo=1, help="a positive integer (cap on evaluated samples)"),
    "batch_size": Field((int,), default=256, lo=1, help="a positive integer (evaluation batch size)"),
}
TOP_SPEC = {
    "name": Field((str,), required=True, check=_name_check),
    "description": Field((str,), default=""),
    "model": Field((dict,), required=True),
    "data": Field((dict,)),
    "stages": Field((list,), required=True),
    "plugins": Field((list,), default=[], check=_modules_check,
                     help="a list of module names imported first (they register stages, methods, criteria, backends)"),
}
DATA_KEYS = ("eval", "train", "calib")


@dataclass
class Recipe:
    """A parsed recipe: `stages` are its raw [[stages]] tables (otcompress.plan checks them)."""

    path: Path
    name: str
    model: dict
    data: dict | None
    stages: list
    sha256: str


def data_facts(data: dict | None) -> set[str]:
    d = data or {}
    facts = {f"data.{k}" for k in DATA_KEYS if d.get(k)}
    if d.get("train") or d.get("eval"):
        facts.add("data.any")
    if d.get("train"):
        facts.add("data.calib")  # training images calibrate too; test images never do
    return facts


def import_plugins(modules: list[str], base: Path, where: str) -> None:
    """Plugins register their entries on import; a module beside the recipe is found too."""
    sys.path.insert(0, str(base))
    try:
        for i, name in enumerate(modules):
            try:
                importlib.import_module(name)
            except Exception as e:
                fail(where, f"plugins[{i}]", f"cannot import {name!r}: {type(e).__name__}: {e}")
    finally:
        sys.path.remove(str(base))


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise OTCError(f"--set {text!r}: expected KEY.PATH=VALUE, e.g. stages.1.sparsity=0.3")
    key, value = text.split("=", 1)
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value  # bare strings need no quotes on the command line
    return key.strip().split("."), parsed


def apply_override(raw: dict, keys: list[str], value: Any, text: str) -> None:
    node: Any = raw
    for i, k in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not k.isdigit() or int(k) >= len(node):
                raise OTCError(f"--set {text}: '{'.'.join(keys[:i + 1])}' is not an index of a list of {len(node)} entries")
            if last:
                node[int(k)] = value
            else:
                node = node[int(k)]
        elif isinstance(node, dict):
            if last:
                node[k] = value
            else:
                node = node.setdefault(k, {})
        else:
            raise OTCError(f"--set {text}: '{'.'.join(keys[:i])}' is a value, not a table")


def _resolve(base: Path, p: str | None) -> str | None:
    if p is None:
        return None
    q = Path(p).expanduser()
    return str(q if q.is_absolute() else (base / q).resolve())


def _resolve_arch(base: Path, arch: str) -> str:
    """`hf:DIR` names a directory: relative to the recipe, like every other path."""
    prefix, sep, rest = arch.partition(":")
    return f"hf:{_resolve(base, rest)}" if sep and prefix == "hf" else arch


def load_recipe(path: str | Path, overrides: list[str] = (), edit=None) -> Recipe:
    """Read a recipe and check everything but its stages.

    Args:
        path: the TOML file.
        overrides: --set KEY.PATH=VALUE strings, applied before the checks.
        edit: `edit(raw)` changes the parsed table before it is checked (the sweep sets a stage's target that
            way); recorded in the recipe hash by its repr.

    Raises:
        OTCError: one line naming the file, the key path, the value and what is allowed.
    """
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise OTCError(f"{where}: recipe file not found")
    text = path.read_bytes()
    try:
        raw = tomllib.loads(text.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise OTCError(f"{where}: not valid TOML: {e}") from None
    for o in overrides:
        keys, value = parse_override(o)
        apply_override(raw, keys, value, o)
    if edit is not None:
        edit(raw)
    sha = hashlib.sha256(text + "\n".join([*overrides, repr(edit or "")]).encode()).hexdigest()
    return recipe_from_table(raw, where, path.resolve(), sha)


def recipe_from_table(raw: dict, where: str, path: Path, sha256: str) -> Recipe:
    """A recipe from its parsed table (a TOML file's, or the Python API's): the same checks, paths resolved
    relative to `path`'s folder. `where` names the source in error messages."""
    top = check_table(raw, TOP_SPEC, where, "")
    base = path.parent
    import_plugins(top["plugins"], base, where)
    model = check_table(top["model"], MODEL_SPEC, where, "model")
    data = check_table(top["data"], DATA_SPEC, where, "data") if top["data"] is not None else None
    model["checkpoint"] = _resolve(base, model["checkpoint"])
    model["arch"] = _resolve_arch(base, model["arch"])
    if model["checkpoint"] and not Path(model["checkpoint"]).is_file():
        fail(where, "model.checkpoint", f"file not found: {model['checkpoint']}")
    if data is not None:
        for key in DATA_KEYS:
            data[key] = _resolve(base, data[key])
            if data[key] and not Path(data[key]).exists():
                fail(where, f"data.{key}", f"not found: {data[key]}")
        if (data["mean"] is None) != (data["std"] is None):
            fail(where, "data", "give both mean and std, or neither")
        if data["mean"] is not None and len(data["mean"]) != len(data["std"]):
            fail(where, "data.std", f"has {len(data['std'])} entries but data.mean has {len(data['mean'])}")
    if not top["stages"]:
        fail(where, "stages", "expected at least one [[stages]] table")
    return Recipe(path=path, name=top["name"], model=model, data=data, stages=list(top["stages"]), sha256=sha256)
