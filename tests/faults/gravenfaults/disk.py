"""Disk faults: each member's data directory on its own small tmpfs, an LD_PRELOAD shim for
fsync/write errors (``faultfs.c``, built with ``cc`` per run), a filler for a full disk, and
torn or corrupted store files.

tmpfs mounts are named ``<topology tag>-disk<i>`` (the tag carries the harness's pid), so a later
run can unmount what a crashed run left behind. fsync on tmpfs costs nothing: the harness kills
processes, not the machine, so what a process wrote is there after its death either way (the
fsync ordering itself is checked by tests/test_crash_safety.py and tests/test_peer_transport.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import shutil
import subprocess
from pathlib import Path

from .topology import PREFIX, pid_alive, sh

SHIM_SOURCE = Path(__file__).with_name("faultfs.c")
DB_NAME = "registers.sqlite3"  # graven.node.storage.schema.DB_NAME
_MOUNT = re.compile(rf"^{PREFIX}(\d+)-disk\d+$")


def build_shim(cache_dir: Path) -> Path:
    """Compile the shim (once per source version) and return the .so path."""
    source = SHIM_SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:12]
    out = cache_dir / f"faultfs-{digest}.so"
    if not out.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            raise RuntimeError("no C compiler (cc) to build the fault shim")
        subprocess.run(
            [cc, "-O2", "-shared", "-fPIC", "-o", str(tmp), str(SHIM_SOURCE), "-ldl"],
            check=True,
            capture_output=True,
        )
        os.replace(tmp, out)
    return out


def set_mode(ctl: Path, mode: str) -> None:
    """'0' normal, 'f' fsync fails, 'w' writes and fsync fail (read by the shim via mmap)."""
    assert mode in ("0", "f", "w")
    with open(ctl, "r+b") as fh:
        fh.write(mode.encode())
        fh.flush()


def mount_tmpfs(name: str, path: Path, size_mb: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    sh("mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", name, str(path))


def umount(path: Path) -> None:
    sh("umount", "-l", str(path), check=False)


def our_mounts() -> list[tuple[str, str]]:
    out = []
    with open("/proc/mounts", encoding="utf-8") as fh:
        for line in fh:
            source, target = line.split()[:2]
            if _MOUNT.match(source):
                out.append((source, target))
    return out


def sweep_stale_mounts() -> list[str]:
    swept = []
    for source, target in our_mounts():
        m = _MOUNT.match(source)
        if m and not pid_alive(int(m.group(1))):
            umount(Path(target))
            swept.append(target)
    return swept


def filler_path(path: Path) -> Path:
    return path / "FILLER"


def fill(path: Path) -> Path:
    """Take every free byte of the filesystem at ``path``; returns the filler to delete.

    The filler's path is fixed (``filler_path``), so a caller can remove it even when this
    raised half-way. Unbuffered: a buffered file would raise ENOSPC again at close."""
    filler = filler_path(path)
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    with open(filler, "wb", buffering=0) as fh:
        with contextlib.suppress(OSError):
            os.posix_fallocate(fh.fileno(), 0, free)
        # whatever fallocate left (rounding), take with plain writes until ENOSPC
        block = b"\0" * 65536
        with contextlib.suppress(OSError):
            for _ in range(1 << 16):
                fh.write(block)
    return filler


CORRUPTIONS = ("torn", "garbage", "header", "empty")


def corrupt(db: Path, how: str, rng: random.Random) -> str:
    """Damage the store file: 'torn' cuts it mid-page, 'garbage' overwrites page headers,
    'header' scribbles over the file header, 'empty' leaves a file of 0 bytes (what some
    filesystems show after a crash before the data blocks were written)."""
    size = db.stat().st_size
    page = 4096
    pages = size // page
    if how == "empty":
        os.truncate(db, 0)
        return f"truncated {db.name} from {size} to 0 bytes"
    if how == "header":
        with open(db, "r+b") as fh:
            fh.seek(16)
            fh.write(bytes(rng.randrange(256) for _ in range(84)))
        return f"overwrote bytes 16..99 (the file header) of {db.name}"
    if how == "torn":
        cut = max(
            page + 100, int(size * rng.uniform(0.3, 0.7)) // page * page + rng.randrange(1, page)
        )
        cut = min(cut, size - 1)
        os.truncate(db, cut)
        return f"truncated {db.name} from {size} to {cut} bytes"
    # garbage: every page after the first gets its b-tree header smashed (the first holds the
    # header SQLite needs to recognise the file; damage there is a 'foreign file' case)
    with open(db, "r+b") as fh:
        for p in range(1, max(2, pages)):
            fh.seek(p * page)
            fh.write(bytes(rng.randrange(256) for _ in range(64)))
    return f"overwrote the first 64 bytes of {max(1, pages - 1)} page(s) of {db.name}"


def backup(data_dir: Path, to: Path) -> None:
    if to.exists():
        shutil.rmtree(to)
    to.mkdir(parents=True)
    for f in data_dir.iterdir():
        if f.name.startswith(DB_NAME):
            shutil.copy2(f, to / f.name)


def restore(data_dir: Path, frm: Path) -> None:
    for f in data_dir.iterdir():
        if f.name.startswith(DB_NAME):
            f.unlink()
    for f in frm.iterdir():
        shutil.copy2(f, data_dir / f.name)
