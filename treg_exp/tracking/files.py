"""The run directory's files: atomic writes, a directory lock, tolerant reads, and one-line write errors.

Every file a run writes goes through :func:`atomic_write`: the bytes go to a temporary file with a name no other
process can pick (``.<name>.<pid>.<random>.tmp`` beside the target), which is then renamed over the target. A job
killed at any moment (``kill -9``, pre-emption) leaves either the old file or the new one, never half a file; two
processes writing the same file leave one of the two whole versions. Files are created with mode ``0666`` filtered
by the process umask, as ``open()`` does (so a group-readable umask gives group-readable results).

A write that fails for a reason of the environment (read-only or missing location, a file where a folder should
be, a full disk or quota) raises :class:`OutputError`, a one-line :class:`~treg_exp.common.errors.UserError` naming the
path and what to do; the target is left as it was and the temporary file is removed.

:func:`locked` serialises the read-all-rows-then-write-the-tables steps of the processes sharing a run directory
(shards pointed at one folder), so the tables are always built from every row on disk.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import logging
import math
import os
import re
import secrets
import socket
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from treg_exp.common.errors import OutputError

try:  # POSIX only; elsewhere the tables are still rebuilt by each process, without the lock
    import fcntl
except ImportError:  # pragma: no cover - not on Linux
    fcntl = None

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
_UNLOCKABLE: set[str] = set()  # folders whose filesystem refused a lock (warned once)


# --- errors -----------------------------------------------------------------------------------------------------
def _blocking_file(path: Path) -> Path | None:
    """The first existing ancestor of ``path`` (or ``path`` itself) that is a file, not a folder."""
    for candidate in [*reversed(path.parents), path]:
        if candidate.exists() and not candidate.is_dir():
            return candidate
    return None


def output_error(path: Path, error: OSError, action: str = "write") -> OutputError:
    """A one-line :class:`OutputError` for ``error`` met while writing ``path``: what went wrong and what to do."""
    code = error.errno
    if code in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        blocker = _blocking_file(path)
        where = f" ({blocker})" if blocker not in (None, path) else ""
        advice = f"a file stands where a folder is needed{where}: move it away or choose another hydra.run.dir"
    elif code in (errno.ENOSPC, errno.EDQUOT):
        advice = "the disk or quota is full: free space and run again (finished images are kept and skipped)"
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        advice = "the location is not writable: fix its permissions or set hydra.run.dir / paths.output_root"
    elif code == errno.ENOENT:
        advice = "a folder on the path is missing or was removed while running: check the output location"
    else:
        advice = "check the output location"
    reason = error.strerror or type(error).__name__
    return OutputError(f"cannot {action} {path}: {reason}; {advice}")


def ensure_dir(path: Path) -> Path:
    """``mkdir -p path``, with a one-line :class:`OutputError` when the environment refuses."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise output_error(path, error, "create the folder") from error
    if not path.is_dir():  # mkdir(exist_ok=True) accepts nothing else, but a race can replace it
        raise output_error(path, OSError(errno.ENOTDIR, "not a folder"), "create the folder")
    return path


def check_output_dir(path: Path, subfolders: Sequence[str] = ()) -> None:
    """One line (:class:`OutputError`) if ``path`` cannot become a writable run directory; writes nothing.

    Checks that no file stands where ``path`` or one of its ``subfolders`` must be a folder, and that the nearest
    existing folder of ``path`` is writable (so a job fails before loading weights, not after).
    """
    path = Path(path)
    blocker = _blocking_file(path)
    if blocker is None:
        blocker = next((path / s for s in subfolders if (path / s).exists() and not (path / s).is_dir()), None)
    if blocker is not None:
        raise output_error(blocker, OSError(errno.ENOTDIR, "Not a directory"), "use")
    existing = next(p for p in [path, *path.parents] if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise output_error(existing, OSError(errno.EACCES, "Permission denied"), "write into")


# --- atomic writes ----------------------------------------------------------------------------------------------
#: this machine's name as it appears in temporary file names (no dots, so names split cleanly)
HOST = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0]) or "host"


def _open_temp(path: Path, binary: bool) -> tuple[Path, IO]:
    """A new temporary file beside ``path`` with a name unique across processes and hosts (mode 0666 & ~umask):
    ``.<name>.<host>.<pid>.<random>.tmp``."""
    tmp = path.with_name(f".{path.name[:120]}.{HOST}.{os.getpid()}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    return tmp, os.fdopen(fd, "wb" if binary else "w", newline=None if binary else "")


def atomic_write(path: Path, write: Callable[[IO], None], mode: str = "w") -> None:
    """Write through ``write(handle)`` into a fresh temporary file beside ``path``, then rename it over ``path``.

    ``mode`` is ``"w"`` (text) or ``"wb"`` (bytes). Environment failures raise :class:`OutputError` (one line);
    ``path`` is then unchanged. Other exceptions of ``write`` propagate unchanged (also with ``path`` unchanged).
    """
    path = Path(path)
    ensure_dir(path.parent)
    tmp = None
    try:
        tmp, handle = _open_temp(path, binary="b" in mode)
        with handle:
            write(handle)
        os.replace(tmp, path)
    except OSError as error:
        _remove(tmp)
        raise output_error(path, error) from error
    except BaseException:
        _remove(tmp)
        raise


def _remove(tmp: Path | None) -> None:
    if tmp is not None:
        with contextlib.suppress(OSError):
            tmp.unlink()


def write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda h: h.write(data), mode="wb")


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda h: h.write(text))


def save_image(path: Path, image: Any, format: str = "PNG") -> None:
    """A PIL image written atomically (``image.save`` into the temporary file)."""
    atomic_write(path, lambda h: image.save(h, format=format), mode="wb")


def save_torch(path: Path, obj: Any) -> None:
    """``torch.save(obj)`` written atomically."""
    import torch

    atomic_write(path, lambda h: torch.save(obj, h), mode="wb")


def strict_json(data: Any) -> Any:
    """``data`` with every non-finite float replaced by ``None`` (so the file is JSON that every parser reads)."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {k: strict_json(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [strict_json(v) for v in data]
    return data


def write_json(path: Path, data: Any, strict: bool = False) -> None:
    """``data`` as indented JSON. ``strict``: non-finite floats become ``null`` (else Python's ``Infinity``/``NaN``)."""
    if strict:
        data = strict_json(data)
    atomic_write(path, lambda h: json.dump(data, h, indent=2, sort_keys=False, default=str, allow_nan=not strict))


def write_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """One compact JSON object per line."""
    atomic_write(path, lambda h: h.writelines(json.dumps(r, default=str) + "\n" for r in records))


def write_csv(path: Path, rows: Sequence[dict[str, Any]], first_columns: Sequence[str] = ()) -> None:
    """Rows as CSV; columns are ``first_columns`` then the others in order of first appearance."""
    columns = list(first_columns)
    for row in rows:
        columns += [key for key in row if key not in columns]

    def write(handle: IO) -> None:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)

    atomic_write(path, write)


def remove_stale_temps(folder: Path) -> int:
    """Remove the temporary files under ``folder`` left by killed processes of this host; returns how many.

    Only files named by :func:`_open_temp` on this host whose process is gone are removed: a live writer's file,
    or one of another host sharing the folder, is never touched.
    """
    removed = 0
    for tmp in Path(folder).rglob(f".*.{HOST}.*.tmp"):
        parts = tmp.name.rsplit(".", 4)  # [".<name>", host, pid, random, "tmp"]
        if len(parts) != 5 or parts[1] != HOST or not parts[2].isdigit():
            continue
        try:
            os.kill(int(parts[2]), 0)
            continue  # the writer is alive (or someone else's process): leave it
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed += 1
    return removed


# --- reads ------------------------------------------------------------------------------------------------------
def read_json(path: Path) -> Any | None:
    """The JSON in ``path``, or ``None`` with a warning naming it when it is unreadable (truncated, not JSON)."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        log.warning("%s is unreadable (%s: %s): it is ignored and rebuilt", path, type(error).__name__, error)
        return None


# --- the directory lock -----------------------------------------------------------------------------------------
@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder/.lock`` (``flock``) for the duration of the block.

    Processes sharing a run directory take it around "read every row, write the tables", so the last writer's
    tables hold every row written before it. Where the filesystem refuses locks (some cluster filesystems
    without ``flock``), a warning is logged once and the block runs unlocked.
    """
    folder = ensure_dir(Path(folder))
    lock_path = folder / LOCK_FILE
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as error:
        raise output_error(lock_path, error) from error
    try:
        acquired = False
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                acquired = True
            except OSError as error:
                if str(folder) not in _UNLOCKABLE:
                    _UNLOCKABLE.add(str(folder))
                    log.warning("cannot lock %s (%s): shards sharing this folder may race", lock_path, error)
        try:
            yield
        finally:
            if acquired:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
