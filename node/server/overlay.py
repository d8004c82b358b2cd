"""A request-local view of key states, so items of one batch see each other's changes.

Decisions for a whole request are made first and submitted to the store together (one group
commit). When a request names a key twice, the second item must see the first item's change;
the overlay gives it a private copy instead of touching the store's cache early.
"""

from __future__ import annotations

from ..protocol.acceptor import Change, KeyState, apply
from ..storage import RegisterStore


class Overlay:
    def __init__(self, store: RegisterStore) -> None:
        self._store = store
        self._own: dict[str, KeyState] = {}
        self.changes: list[tuple[str, Change]] = []

    def state(self, key: str) -> KeyState:
        return self._own.get(key) or self._store.get(key)

    def record(self, key: str, change: Change) -> None:
        own = self._own.get(key)
        if own is None:
            own = self._own[key] = self._store.get(key).copy()
        apply(own, change)
        self.changes.append((key, change))
