"""Durable register storage: SQLite (WAL, synchronous=FULL) behind a group-commit thread."""

from .errors import StoreError
from .identity import Identity, IdentityRefused
from .store import RegisterStore

__all__ = ["Identity", "IdentityRefused", "RegisterStore", "StoreError"]
