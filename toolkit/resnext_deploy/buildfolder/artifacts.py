"""Artifacts (a file a stage produced, with its hash, backend, precision and parent) and atomic writes."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Union

from ..errors import BadInputError, DeployError, ResourceError

log = logging.getLogger(__name__)

#: a folder holding one of these JSON files with a "schema" of ours is an output of this toolkit (a build or
#: bundle: manifest.json; a sensitivity study: sensitivity.json; a benchmark: bench.json)
OWNED_MARKERS = ("manifest.json", "sensitivity.json", "bench.json")
OWNED_SCHEMA_PREFIX = "resnext-deploy/"
#: the operating system ran out of something (disk, quota) or refuses writes: not a bug, exit 6
RESOURCE_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exceeded",
                   errno.EROFS: "the file system is read-only"}


def sha256_file(path: Union[str, Path], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Artifact:
    """One model a stage produced. ``path`` is the primary file; ``files`` maps every file to its sha256.

    Paths are relative to the build directory when the artifact lives in one (see ``relative_to``).
    """

    name: str  # unique within a build, e.g. "openvino-int8"
    path: str
    kind: str  # onnx | onnx-qdq | ort-optimized | openvino-ir | tensorrt-engine | pytorch
    backend: str  # onnxruntime | openvino | tensorrt | pytorch | onnx
    precision: str  # fp32 | fp16 | int8
    parent: Optional[str] = None
    stage: str = ""
    files: Dict[str, str] = field(default_factory=dict)
    settings: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_files(cls, name: str, paths: List[Path], root: Optional[Path] = None, **kw: Any) -> "Artifact":
        """Create an artifact whose primary file is ``paths[0]``, hashing every file."""
        rel = [str(p.relative_to(root)) if root else str(p) for p in paths]
        files = {r: sha256_file(p) for r, p in zip(rel, paths)}
        return cls(name=name, path=rel[0], files=files, **kw)

    @property
    def sha256(self) -> str:
        return self.files.get(self.path, "")

    def abspath(self, root: Optional[Path] = None) -> Path:
        return (Path(root) / self.path) if root else Path(self.path)

    def size_bytes(self, root: Optional[Path] = None) -> int:
        base = Path(root) if root else Path(".")
        return sum((base / f).stat().st_size for f in self.files)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Artifact":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@contextlib.contextmanager
def atomic_file(final: Union[str, Path]) -> Iterator[Path]:
    """Yield a temp path beside ``final``; on success rename it into place, on error remove it.

    The temp file is flushed to disk before the rename, so a disk that filled up while a library (onnx.save,
    torch.save) wrote it surfaces here as :class:`ResourceError`, never later as a truncated file."""
    final = Path(final)
    ensure_writable_dir(final.parent)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with disk_errors(tmp, final):
            yield tmp
            if tmp.is_file():
                _fsync(tmp)
            os.replace(tmp, final)
    finally:
        if os.path.lexists(tmp):
            _remove(tmp)


@contextlib.contextmanager
def atomic_dir(final: Union[str, Path], force: bool = False, ours: Optional[Callable[[Path], bool]] = None) -> Iterator[Path]:
    """Yield an empty staging directory beside ``final``; on success it replaces ``final`` whole.

    ``final`` may be missing, an empty folder or an output of this toolkit (:func:`foreign`; ``ours`` adds a
    test for the caller's own kind of folder); anything else is refused with BadInputError unless ``force``.
    Staging folders of dead processes beside ``final`` are removed first (:func:`remove_stale`).

    The swap holds a lock beside ``final`` (``.NAME.lock``): two writers into one place both finish, the second
    waits for the first's swap and the last one wins. On Linux the swap is one ``renameat2(RENAME_EXCHANGE)``, so
    a reader of ``final/manifest.json`` sees the old build or the new one, never neither; where the kernel or the
    file system lacks it, two renames (a reader may then miss ``final`` for the instant between them).
    A failed or interrupted build (an exception, SIGINT, SIGTERM through the CLI) removes the staging folder and
    leaves the previous build untouched; ENOSPC/EDQUOT/EROFS become :class:`ResourceError`.
    """
    final = Path(final)
    ensure_writable_dir(final.parent)
    check_replaceable(final, force, ours)
    remove_stale(final)
    stage = Path(tempfile.mkdtemp(prefix=f"{staging_prefix(final)}{os.getpid()}-{host_tag()}-", dir=final.parent))
    umask = os.umask(0)
    os.umask(umask)
    stage.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; a build directory is as readable as any other
    try:
        with disk_errors(stage, final):
            yield stage
        with writer_lock(final):
            check_replaceable(final, force, ours)  # again: another writer may have put something there meanwhile
            _swap_in(stage, final)  # the old build (if any) is now at the staging name
    finally:
        if os.path.lexists(stage):
            _remove(stage)


def is_toolkit_output(path: Union[str, Path]) -> bool:
    """True if the folder ``path`` holds a marker file (:data:`OWNED_MARKERS`) whose schema is ours."""
    for name in OWNED_MARKERS:
        try:
            data = json.loads((Path(path) / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and str(data.get("schema", "")).startswith(OWNED_SCHEMA_PREFIX):
            return True
    return False


def foreign(path: Union[str, Path], ours: Optional[Callable[[Path], bool]] = None) -> Optional[str]:
    """What is at ``path`` if a build may not replace it, else None.

    Replaceable: nothing, an empty folder, a folder this toolkit wrote (:func:`is_toolkit_output`, or ``ours``).
    Anything else (a folder of other files, a regular file, a symbolic link) is described for the error."""
    path = Path(path)
    if not os.path.lexists(path):
        return None
    if path.is_symlink():
        return f"a symbolic link (to '{os.readlink(path)}')"
    if not path.is_dir():
        kind = "a file" if path.is_file() else "a special file"
        return f"{kind} of {path.lstat().st_size} bytes"
    try:
        entries = sorted(e.name for e in path.iterdir())
    except OSError as exc:
        return f"a folder that cannot be listed ({exc.strerror or exc})"
    if not entries or is_toolkit_output(path) or (ours is not None and ours(path)):
        return None
    shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
    return f"a folder of {len(entries)} entries that resnext-deploy did not write ({shown}; no manifest.json of ours)"


def check_replaceable(path: Union[str, Path], force: bool = False, ours: Optional[Callable[[Path], bool]] = None) -> None:
    """Refuse (BadInputError) to replace ``path`` unless it is missing, empty or ours, or ``force`` is given."""
    what = foreign(path, ours)
    if what is None:
        return
    if force:
        log.warning("replacing '%s' (%s) because force was given", path, what)
        return
    raise BadInputError(
        f"The output '{path}' is {what}: a build replaces its output whole, so it would be destroyed. Choose a new "
        "or empty folder (or a previous build), or pass --force (force=True) to replace it anyway."
    )


def staging_prefix(final: Union[str, Path]) -> str:
    """Name prefix of ``final``'s staging folders; the writer's pid and host follow (``.NAME.tmp-<pid>-<host>-*``)."""
    return f".{Path(final).name}.tmp-"


def host_tag() -> str:
    """8 hex digits naming this machine: on a shared file system, only the machine whose pid it is judges it."""
    import socket

    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def pid_alive(pid: int) -> bool:
    """True if process ``pid`` exists on this machine (one we may not signal counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: someone else's process: alive
        return True
    return True


def remove_stale(final: Union[str, Path]) -> List[Path]:
    """Remove what dead processes left beside ``final``: staging folders ``.NAME.tmp-<pid>-<host>-*`` (and the
    temp folders made beside a staging folder, ``..NAME.tmp-<pid>-<host>-*``) of this host whose pid no longer
    runs. Returns them.

    A live process's staging is never touched, nor another machine's (a shared file system). A pid the system
    reused after a crash keeps its litter until that process ends (harmless: a few hidden folders)."""
    final = Path(final)
    pattern = re.compile(r"^\.?" + re.escape(staging_prefix(final)) + r"(\d+)-" + host_tag() + "-")
    removed: List[Path] = []
    try:
        entries = list(final.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = pattern.match(entry.name)
        if m and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))):
            _remove(entry)
            removed.append(entry)
            log.info("removed '%s', left by process %s which no longer runs", entry, m.group(1))
    return removed


@contextlib.contextmanager
def writer_lock(final: Union[str, Path]) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``.NAME.lock`` beside ``final``; a second writer waits for it.

    The lock file is removed on release; a waiter that then holds a lock on the removed file retries on a new
    one (the inode check), so no two writers ever hold "the" lock at once. Without fcntl (Windows): no lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not Linux/macOS
        yield
        return
    final = Path(final)
    lock = final.with_name(f".{final.name}.lock")
    while True:
        fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:  # the holder removed it as we took it: take the new one
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap the names ``a`` and ``b`` in one step (Linux ``renameat2(RENAME_EXCHANGE)``, glibc >= 2.28).

    False where it is not available (another OS, an older libc, a file system without it): the caller then
    falls back to two renames."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap_in(stage: Path, final: Path) -> None:
    """Put ``stage`` at ``final`` and remove what was there. Hold :func:`writer_lock` around it."""
    if not os.path.lexists(final):
        os.rename(stage, final)
        return
    if not _exchange(stage, final):
        old = stage.with_name(stage.name + ".old")  # same pid prefix: remove_stale finds it after a crash
        os.rename(final, old)
        os.rename(stage, final)
        _remove(old)
        return
    _remove(stage)  # the old build, now at the staging name


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def _fsync(path: Path) -> None:
    """Flush ``path`` to the device: a full disk or quota surfaces now, as an OSError, not as a truncated file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def folder_size(path: Union[str, Path]) -> int:
    """Bytes of the files under ``path`` (a file: its size; missing: 0)."""
    path = Path(path)
    if not os.path.lexists(path):
        return 0
    if not path.is_dir():
        return path.lstat().st_size
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_size
    return total


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def resource_error(exc: OSError, written: Union[str, Path, None], final: Union[str, Path, None] = None,
                   where: Union[str, Path, None] = None) -> ResourceError:
    """One clear error for ENOSPC/EDQUOT/EROFS: the path, what was written, what more is needed (estimated from
    the previous output at ``final`` when there is one, else from what had been written). ``written``: the file
    or staging folder being written (None: unknown, then only the free space is said)."""
    where = Path(where) if where else Path(exc.filename) if exc.filename else Path(written) if written else None
    what = RESOURCE_ERRNOS.get(exc.errno or 0, exc.strerror or str(exc))
    target = f"Cannot write '{where}'" if where else "Cannot write"
    if exc.errno == errno.EROFS:
        err = ResourceError(f"{target}: {what}. Choose an output on a writable file system (--out).")
    elif written is None:
        free = _free_bytes(where) if where else None
        left = f" ({_mib(free)} left on the device)" if free is not None else ""
        err = ResourceError(f"{target}: {what}{left}. Free some space, or write somewhere else.")
    else:
        written = Path(written)
        done = folder_size(written)
        try:
            free = shutil.disk_usage(written if written.is_dir() else written.parent).free
        except OSError:
            free = 0
        need = f"{_mib(done)} written, {_mib(free)} left on the device"
        previous = folder_size(final) if final is not None and Path(final).is_dir() else 0
        if previous > done:  # the previous output is the best estimate of what a complete one takes
            more = max(int(previous * 1.1) - done - free, 1 << 20)
            need += f"; a complete output takes about {_mib(previous)} (the previous one): free at least {_mib(more)} more"
        else:
            need += f"; free at least {_mib(max(done, 1 << 20))} more"
        kept = f" The previous output at '{final}' is untouched." if final is not None and os.path.lexists(final) else ""
        err = ResourceError(f"{target}: {what} ({need}), or choose another --out.{kept}")
    err.os_error, err.path = exc, where  # type: ignore[attr-defined]  # an outer writer re-describes it
    return err


def is_resource_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in RESOURCE_ERRNOS


@contextlib.contextmanager
def disk_errors(written: Union[str, Path], final: Union[str, Path, None] = None) -> Iterator[None]:
    """Turn ENOSPC/EDQUOT/EROFS raised inside into :class:`ResourceError` (see :func:`resource_error`).

    Libraries wrap the OSError at times (a RuntimeError "No space left on device" from a C++ writer): its
    cause or its message is enough to know. A parse error of a file the build just wrote, on a device with no
    space left, is the same condition (a C++ writer that truncated without an error) and is reported so."""
    try:
        yield
    except ResourceError as exc:  # from an inner writer (a file of this folder): say it for the whole folder
        inner = getattr(exc, "os_error", None)
        if inner is None or Path(written) == Path(getattr(exc, "path", "")):
            raise
        raise resource_error(inner, written, final, where=getattr(exc, "path", None)) from exc.__cause__
    except DeployError as exc:  # ours says what went wrong, unless a full disk is behind it (a wrapped OSError)
        cause = resource_cause(exc)
        if cause is None:
            raise
        raise resource_error(cause, written, final) from exc
    except Exception as exc:
        log.debug("writing '%s' failed (%s bytes free there)", written, _free_bytes(written), exc_info=True)
        cause = resource_cause(exc)
        if cause is None and _device_full(written):
            cause = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if cause is not None:
            raise resource_error(cause, written, final) from exc
        raise


def resource_cause(exc: BaseException) -> Optional[OSError]:
    """The ENOSPC/EDQUOT/EROFS behind ``exc``: itself, its cause or context, or named in its message (a C++
    writer's RuntimeError "No space left on device"); None if there is none. Code that turns exceptions into
    its own errors lets these through, so they reach :func:`disk_errors` (exit 6, not "bad input")."""
    seen = set()
    e: Optional[BaseException] = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if is_resource_error(e):
            return e  # type: ignore[return-value]
        for code in RESOURCE_ERRNOS:
            if os.strerror(code) in str(e):
                return OSError(code, os.strerror(code))
        e = e.__cause__ or e.__context__
    return None


def _free_bytes(path: Union[str, Path]) -> Optional[int]:
    path = Path(path)
    try:
        st = os.statvfs(path if path.is_dir() else path.parent)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _largest_file(path: Path) -> int:
    if not path.is_dir():
        return path.stat().st_size if path.is_file() else 0
    return max((f.stat().st_size for f in path.rglob("*") if f.is_file()), default=0)


def _device_full(path: Union[str, Path]) -> bool:
    """The file system of ``path`` cannot take one more file as large as the largest written so far (at
    least 1 MiB): asked by reserving that much in a probe file, removed at once. A C++ writer that failed on a
    full disk ("iostream error", a truncated protobuf) may already have freed its half-written file, so the
    free space alone does not tell."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    try:
        need = max(1 << 20, _largest_file(path))
    except OSError:
        need = 1 << 20
    probe = folder / f".space-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
    except OSError as exc:
        return is_resource_error(exc)
    try:
        os.posix_fallocate(fd, 0, need)
        return False
    except OSError as exc:
        return is_resource_error(exc)
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(probe)


def ensure_writable_dir(path: Union[str, Path]) -> Path:
    """Create ``path`` if needed and make sure we can write in it, or raise BadInputError."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        if is_resource_error(exc):  # a read-only file system, a full disk: exit 6 as documented, not bad input
            raise resource_error(exc, None, where=path) from exc
        raise BadInputError(
            f"The output directory '{path}' is not writable ({exc.strerror or exc}). "
            "Choose another with --out, or fix its permissions."
        ) from exc
    return path
