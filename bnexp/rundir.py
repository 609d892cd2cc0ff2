"""A run dir's layout and its one owner.

A run dir holds one run: config.yaml, events, metrics.csv, checkpoints/, summary.json. A
replicated run's dir holds one such dir per seed, RUN_DIR/seed_<seed>.

While a run trains, its process holds an exclusive lock on RUN_DIR/.lock (flock), so that a second
process (the same command run twice, a Slurm requeue while the old job still runs) is refused
before it touches the run, instead of "resuming" from a live run's checkpoint and writing beside
it. The kernel releases the lock when the holder dies, however it dies, so a killed run still
resumes. The file itself stays: it only ever names the last holder.

On network file systems the lock is as good as the file system's locking: Linux maps flock onto
NFS byte-range locks (NFSv4, or NFSv3 with its lock manager), which other clients see; a client
that dies loses its lock when the server's lease expires (NFSv4: about 90 s). File systems mounted
with node-local locks (Lustre's `localflock`, some FUSE file systems) lock only within one machine:
there, never start the same run dir on two nodes at once.
"""

from __future__ import annotations

import fcntl
import os
import socket
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from bnexp.errors import RunDirInUse

LOCK = ".lock"
_held: dict[Path, int] = {}  # run dir -> the open lock file: this process's locks


def replica_dir(run_dir: Path, seed: int) -> Path:
    return Path(run_dir) / f"seed_{seed}"


def replica_dirs(run_dir: Path) -> list[Path]:
    """The replicas' run dirs inside a replicated run's dir (none for a run of one seed)."""
    return sorted((p for p in Path(run_dir).glob("seed_*") if (p / "config.yaml").is_file()),
                  key=lambda p: int(p.name.split("_")[1]))


def acquire(run_dir: Path) -> bool:
    """Lock run_dir (made if missing) for this process, or raise RunDirInUse naming the holder.
    False if this process holds it already (a lock is taken once, however often asked for)."""
    key = Path(run_dir).resolve()
    if key in _held:
        return False
    key.mkdir(parents=True, exist_ok=True)
    fd = os.open(key / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 200).decode(errors="replace").strip() or "a process that has not named itself yet"
        os.close(fd)
        raise RunDirInUse(f"{run_dir} is in use by another bnexp run ({holder}); refusing to train into it "
                          "at the same time. Wait for that run to end, or stop it: a stopped run resumes") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {datetime.now():%Y-%m-%d %H:%M:%S}\n".encode())
    _held[key] = fd
    return True


def holder(run_dir: Path) -> str | None:
    """Who trains in run_dir now (the lock's holder, as it named itself), or None if nobody does."""
    key = Path(run_dir).resolve()
    if key in _held:
        return f"pid {os.getpid()} on {socket.gethostname()} (this process)"
    try:
        fd = os.open(key / LOCK, os.O_RDONLY)
    except OSError:
        return None  # never locked: no run has started there
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return os.read(fd, 200).decode(errors="replace").strip() or "a process that has not named itself yet"
    finally:
        os.close(fd)  # and with it the shared lock, if it was taken


def release(run_dir: Path) -> None:
    fd = _held.pop(Path(run_dir).resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the file releases the lock


@contextmanager
def owned(*run_dirs: Path):
    """Hold the locks of run_dirs for the block (those this process holds already stay held after it)."""
    taken = []
    try:
        for run_dir in run_dirs:
            if acquire(run_dir):
                taken.append(run_dir)
        yield
    finally:
        for run_dir in taken:
            release(run_dir)
