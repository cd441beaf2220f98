"""One registry type for every extension point (stages, model sources, token methods, token adapters,
importance criteria, fusion variants, backends): adding one is one `register` call, never an edit of an
`if` chain. A miss names what exists and suggests the closest name."""

from __future__ import annotations

import difflib
from typing import Any, Callable, Iterator

from .errors import OTCError


class Registry:
    def __init__(self, what: str):
        self.what = what  # e.g. "token method": used in error messages
        self._entries: dict[str, Any] = {}

    def register(self, name: str, entry: Any = None) -> Callable:
        """`REG.register("name", obj)` or as a decorator `@REG.register("name")`."""
        def add(obj):
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.what} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return add(entry) if entry is not None else add

    def unregister(self, name: str) -> None:
        """Remove an entry (a plugin's, or a test's, when it is done with it)."""
        self._entries.pop(name, None)

    def __getitem__(self, name: str) -> Any:
        if name not in self._entries:
            raise OTCError(f"unknown {self.what} {name!r}{self.hint(name)} (known: {', '.join(self)})")
        return self._entries[name]

    def hint(self, name: str) -> str:
        close = difflib.get_close_matches(str(name), list(self._entries), n=1)
        return f" — did you mean '{close[0]}'?" if close else ""

    def get(self, name: str, default: Any = None) -> Any:
        return self._entries.get(name, default)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def items(self):
        return sorted(self._entries.items())
