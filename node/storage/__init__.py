"""Durable register storage: SQLite (WAL, synchronous=FULL) behind a group-commit thread."""

from .errors import StoreError
from .store import RegisterStore

__all__ = ["RegisterStore", "StoreError"]
