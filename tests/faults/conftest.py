"""The fault harness lives in tests/faults/gravenfaults (importable as ``gravenfaults``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
