"""Bearer tokens for clients, stored hashed.

The token file (YAML or JSON) lists each token's name, role and SHA-256 digest, never the token:

    tokens:
      - {name: alice, role: write, sha256: 9f86d0...}

Tokens are 256 random bits (``new_token``), so a fast hash is enough: nobody can guess a
preimage, and a leaked file does not leak usable tokens. The file is read again when it
changes (a rotated Kubernetes Secret), at most once per ``RECHECK`` seconds.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .identity import CLIENT, ROLES, Identity

log = logging.getLogger(__name__)
RECHECK = 1.0
PREFIX = "gvn_"


class TokenFileError(ValueError):
    """A token file that cannot be used (one line)."""


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class TokenEntry:
    name: str
    role: str
    sha256: str

    def to_doc(self) -> dict[str, str]:
        return {"name": self.name, "role": self.role, "sha256": self.sha256}


def parse(doc: Any, where: str = "tokens") -> dict[str, TokenEntry]:
    """Digest -> entry; raises TokenFileError on anything unexpected."""
    if not isinstance(doc, dict) or set(doc) - {"tokens"}:
        raise TokenFileError(f"{where}: expected a mapping with one field, tokens")
    items = doc.get("tokens") or []
    if not isinstance(items, list):
        raise TokenFileError(f"{where}: tokens must be a list")
    out: dict[str, TokenEntry] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict) or set(item) != {"name", "role", "sha256"}:
            raise TokenFileError(f"{where}: tokens[{i}] must have exactly name, role, sha256")
        name, role, sha = item["name"], item["role"], item["sha256"]
        if not isinstance(name, str) or not name:
            raise TokenFileError(f"{where}: tokens[{i}].name must be a non-empty string")
        if role not in ROLES:
            raise TokenFileError(f"{where}: tokens[{i}].role must be one of {', '.join(ROLES)}")
        if not isinstance(sha, str) or len(sha) != 64 or set(sha) - set("0123456789abcdef"):
            raise TokenFileError(f"{where}: tokens[{i}].sha256 must be 64 lowercase hex digits")
        out[sha] = TokenEntry(name, role, sha)
    return out


def load(path: Path) -> dict[str, TokenEntry]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise TokenFileError(f"cannot read token file {path}: {exc}") from None
    return parse(doc, str(path))


def dump(entries: list[TokenEntry]) -> str:
    return yaml.safe_dump({"tokens": [e.to_doc() for e in entries]}, sort_keys=False)


class TokenStore:
    """The tokens a node accepts, following its file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries = load(path)
        self._stamp = self._stat()
        self._checked = time.monotonic()

    def _stat(self) -> tuple[int, int, int]:
        st = os.stat(self.path)
        return st.st_mtime_ns, st.st_size, st.st_ino

    def identify(self, token: str) -> Identity | None:
        self._maybe_reload()
        entry = self._entries.get(digest(token))
        # the dict lookup found a digest equal to ours; compare again in constant time anyway
        if entry is None or not hmac.compare_digest(entry.sha256, digest(token)):
            return None
        return Identity(None, CLIENT, entry.name, entry.role, "token")

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < RECHECK:
            return
        self._checked = now
        try:
            stamp = self._stat()
            if stamp == self._stamp:
                return
            self._entries, self._stamp = load(self.path), stamp
        except (OSError, TokenFileError) as exc:
            log.warning("token file not reloaded (keeping the previous tokens): %s", exc)
