"""The registries behind every extension point (stages, model sources, token methods and adapters, importance
criteria, fusion variants, keep strategies, allocations, channel-analysis op handlers, quantization options,
backends, tasks): adding one is one `register` call at the definition, never an edit of an `if` chain.

`Registry` maps names to entries and iterates in registration order (built-ins first, then plugins).
`TypeRegistry` maps classes to entries and resolves an object by its most specific registered class, so a
plugin's entry for a subclass always wins over the entry for its base, whatever was registered first."""

from __future__ import annotations

import difflib
from typing import Any, Callable, Iterable, Iterator

from .errors import OTCError


def suggest(name: object, options: Iterable[str], cutoff: float = 0.6) -> str:
    """' — did you mean 'x'?' for the closest option, or '' (the one "did you mean" of every error message)."""
    close = difflib.get_close_matches(str(name), [str(o) for o in options], n=1, cutoff=cutoff)
    return f" — did you mean '{close[0]}'?" if close else ""


class Registry:
    """Name -> entry. Args: `what`, the kind of entry, as error messages name it ("token method")."""

    def __init__(self, what: str):
        self.what = what
        self._entries: dict[str, Any] = {}

    def register(self, name: str, entry: Any = None) -> Callable:
        """`REG.register("name", obj)`, or as a decorator `@REG.register("name")`.

        Raises:
            ValueError: another entry is already registered under `name`.
        """
        def add(obj):
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.what} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return add(entry) if entry is not None else add

    def unregister(self, name: str) -> None:
        """Remove an entry (a plugin's, or a test's, when it is done with it); unknown names are ignored."""
        self._entries.pop(name, None)

    def __getitem__(self, name: str) -> Any:
        """The entry. Raises OTCError (exit 2) naming the known entries and the closest one."""
        if name not in self._entries:
            raise OTCError(f"unknown {self.what} {name!r}{self.hint(name)} (known: {', '.join(self)})")
        return self._entries[name]

    def hint(self, name: object) -> str:
        return suggest(name, self._entries)

    def get(self, name: str, default: Any = None) -> Any:
        return self._entries.get(name, default)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def items(self):
        return list(self._entries.items())

    def values(self):
        return list(self._entries.values())


class TypeRegistry:
    """Class -> entry, resolved by the most specific registered class in an object's MRO.

    Args: `what`, the kind of entry, for error messages ("layer resize rule")."""

    def __init__(self, what: str):
        self.what = what
        self._entries: dict[type, Any] = {}

    def register(self, cls: type | tuple[type, ...], entry: Any = None) -> Callable:
        """`REG.register(nn.Linear, fn)` (a tuple registers the entry for each class), or as a decorator."""
        def add(obj):
            for c in (cls if isinstance(cls, tuple) else (cls,)):
                self._entries[c] = obj
            return obj

        return add(entry) if entry is not None else add

    def unregister(self, cls: type) -> None:
        self._entries.pop(cls, None)

    def lookup(self, obj: Any, default: Any = None) -> Any:
        """The entry of the first class in type(obj).__mro__ that has one (the most specific), else `default`."""
        for c in type(obj).__mro__:
            if c in self._entries:
                return self._entries[c]
        return default

    def __contains__(self, cls: object) -> bool:
        return cls in self._entries

    def __iter__(self) -> Iterator[type]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
