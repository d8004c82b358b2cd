"""The one exception the storage layer raises for anything a caller cannot fix in code."""

from __future__ import annotations


class StoreError(Exception):
    """The store cannot be opened or used; the message is one line meant for an operator."""
