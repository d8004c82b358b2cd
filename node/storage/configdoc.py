"""The newest cluster document a member was given live, kept in its data directory.

``POST /v1/admin/config`` saves the document here (written to a temporary file, fsynced,
renamed, the directory fsynced: the same rule as registers, nothing acknowledged before it is
durable) before the member answers or acts on it. At start-up the member serves the newer of
this document and its ``--config`` file (``cluster.order.newer_of``), so a member restarted
with an older file or ConfigMap comes back in the configuration it had installed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .durable import replace_file

FILE = "installed-config.json"


def path(data_dir: str | Path) -> Path:
    return Path(data_dir) / FILE


def load(data_dir: str | Path) -> Any | None:
    """The saved document (decoded JSON), or None when none was saved; ValueError when the
    file is unreadable (the caller says so: it never guesses a configuration)."""
    try:
        text = path(data_dir).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path(data_dir)}: {exc}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{path(data_dir)} is not JSON: {exc}") from None


def save(data_dir: str | Path, doc: Any) -> None:
    """Replace the saved document durably (a crash leaves the old one or the new one)."""
    replace_file(path(data_dir), json.dumps(doc, sort_keys=True))
