"""Graven's fault harness: a real cluster in network namespaces, nemeses, and a history checker.

Run it through pytest (``tests/faults``) or directly: ``python -m gravenfaults.run --help`` with
``tests/faults`` on ``PYTHONPATH`` (see docs/faults.md).
"""
