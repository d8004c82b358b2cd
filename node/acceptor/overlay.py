"""A request-local view of key states, so items of one batch see each other's changes.

Decisions for a whole request are made first and submitted to the store together (one group
commit). When a request names a key twice, the second item must see the first item's change;
the overlay gives it a private copy instead of touching the store's cache early.
"""

from __future__ import annotations

from ..protocol.acceptor import Change, KeyState, apply
from ..storage.interface import RegisterStorage


class Overlay:
    def __init__(self, store: RegisterStorage) -> None:
        self._store = store
        self._own: dict[str, KeyState] = {}
        self._changed: set[str] = set()  # keys with a change but no private copy yet
        self.changes: list[tuple[str, Change]] = []

    def state(self, key: str) -> KeyState:
        own = self._own.get(key)
        if own is not None:
            return own
        if key in self._changed:
            # Named again after a change: build the private copy now. Why lazily: most
            # requests name each key once, and then the copy was pure overhead.
            own = self._own[key] = self._store.get(key).copy()
            for k, change in self.changes:
                if k == key:
                    apply(own, change)
            self._changed.discard(key)
            return own
        return self._store.get(key)

    def record(self, key: str, change: Change) -> None:
        own = self._own.get(key)
        if own is None:
            self._changed.add(key)
        else:
            apply(own, change)
        self.changes.append((key, change))
