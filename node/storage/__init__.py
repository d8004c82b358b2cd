"""Durable register storage: SQLite (WAL, synchronous=FULL) behind a group-commit thread."""

from .errors import StoreError
from .identity import Identity, IdentityRefused
from .store import UNSAFE_ENV, RegisterStore

__all__ = ["UNSAFE_ENV", "Identity", "IdentityRefused", "RegisterStore", "StoreError"]
