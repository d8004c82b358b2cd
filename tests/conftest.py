"""Fixtures every layer's tests may use (helpers themselves live in ``tests.support``)."""

from tests.support.cluster import local_cluster

__all__ = ["local_cluster"]
