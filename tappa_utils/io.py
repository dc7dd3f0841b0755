"""Atomic writes of files, and result folders that are built aside and swapped in whole (`ResultDir`)."""
from __future__ import annotations

import atexit
import json
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import UsageError
from .interrupts import note_swap


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`, on error delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if os.path.isfile(tmp):
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write `obj` as indented JSON to `path` atomically (numpy scalars converted)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, default=_to_builtin) + "\n")


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    """`torch.save` to `path` atomically."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def _to_builtin(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"cannot serialise {type(x).__name__}")



# ------------------------------------------------------------------------------------------------ result folders
# A result folder is built whole in a hidden sibling `.NAME.tappa-tmp.PID.RAND` and swapped in at the end (an
# atomic exchange of the two folders where the kernel supports it), so the previous complete result survives any
# failure or signal. The folder gets a marker file listing what the command wrote; a folder holding anything else
# (any non-empty folder without a marker, whatever its file names) is never replaced. Leftovers of a killed run
# (dead PID) are removed -- or, when the folder itself went missing mid-swap, the previous result is put back -- by
# the next run on the same folder.

MARKER = ".tappa-result"
_STAGING = re.compile(r"^\.(?P<name>.+)\.tappa-(?P<kind>tmp|old)\.(?P<pid>\d+)\.[0-9a-f]+$")
_ACTIVE: set[str] = set()  # staging folders of this process that are still being built


def read_marker(folder: str | os.PathLike) -> dict | None:
    """The marker of a result folder ({"command", "files", ...}), or None when there is none or it is unreadable."""
    try:
        data = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("files"), list) else None


def foreign_entries(folder: str | os.PathLike, command: str, keep: Iterable[str] = ()) -> list[str]:
    """Entries of `folder` that `command` did not write there (sorted); empty when the folder may be replaced.

    Ownership is by the marker only (issue 29): with a marker, the entries it does not list (all of them when
    another command wrote the folder), names in `keep` (files other tools add beside, carried over by `ResultDir`)
    excepted; without one, every entry, whatever its name -- a non-empty folder without a marker is never replaced.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    entries = sorted(e for e in os.listdir(folder) if e != MARKER)
    marker = read_marker(folder)
    if marker is None:
        return [MARKER] + entries if (folder / MARKER).exists() else entries
    entries = [e for e in entries if e not in set(keep)]
    if marker.get("command") != command:
        return [f"the results of {marker.get('command')}"] + entries
    return [e for e in entries if e not in set(marker["files"])]


def refuse_foreign(out: str | os.PathLike, command: str, option: str = "--out", keep: Iterable[str] = ()) -> None:
    """`UsageError` (one line naming the folder and the fix) when `out` holds entries `command` did not write."""
    foreign = foreign_entries(out, command, keep)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        unmarked = "" if (Path(out) / MARKER).exists() else f"; it has no {MARKER} marker"
        raise UsageError(f"{option} {out} holds files that {command} did not write ({shown}{unmarked}); "
                         "choose a new or empty folder")


def check_out_dir(out: str | os.PathLike, option: str = "--out", command: str | None = None,
                  legacy: Iterable[str] = (), signature: str | None = None, keep: Iterable[str] = ()) -> Path:
    """Check an output folder before computing; its absolute path (symbolic links resolved).

    It must not be a file or lie under a file, its nearest existing parent must be writable, and (when `command`
    is given) it must hold only what `command` wrote there before, by its marker, besides the names in `keep` (see
    `foreign_entries`). `legacy` and `signature` are ignored: file names never make a folder a command's own.
    """
    if not str(out).strip():
        raise UsageError(f"{option} must name a folder")
    try:
        out = Path(out).expanduser().resolve()
    except RuntimeError as e:  # "Symlink loop from ..." (OSError ELOOP on newer Pythons: caught the same way)
        raise UsageError(f"{option} {out}: a symbolic link loop; remove the link or choose another folder") from e
    except OSError as e:
        raise UsageError(f"{option} {out}: cannot resolve the path ({e.strerror or e}); choose another folder") from e
    if out.exists() and not out.is_dir():
        raise UsageError(f"{option} {out} is a file, not a folder")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{option} {out}: {parent} is a file, not a folder")
    for folder in ((out.parent, out) if out.exists() else (parent,)):  # the folder, and its parent for the swap
        if not _writable(folder):
            raise UsageError(f"{option} {out}: cannot write in {folder} (permission denied); choose a writable folder")
    if command is not None:
        refuse_foreign(out, command, option, keep)
    return out


def _writable(folder: Path) -> bool:
    """Whether a folder can be created in `folder` (tried, so that read-only file systems count too)."""
    probe = folder / f".tappa-probe.{os.getpid()}"
    try:
        probe.mkdir()
        probe.rmdir()
        return True
    except FileExistsError:
        return True
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover(out: str | os.PathLike) -> list[Path]:
    """Clean what killed runs left beside `out`; when `out` went missing mid-swap, restore the previous result.

    Staging folders of live processes (runs in progress) are left alone. Returns the paths removed or restored.
    """
    out = Path(out)
    if not out.parent.is_dir():
        return []
    leftovers = []
    for entry in os.listdir(out.parent):
        m = _STAGING.match(entry)
        if not m or m["name"] != out.name:
            continue
        path, pid = out.parent / entry, int(m["pid"])
        if str(path) in _ACTIVE or (pid != os.getpid() and _pid_alive(pid)):
            continue
        leftovers.append((m["kind"], path))
    done = []
    if not out.exists():  # killed between the two renames of a non-atomic swap: the previous result comes back
        olds = sorted((p for kind, p in leftovers if kind == "old"), key=lambda p: p.stat().st_mtime)
        if olds:
            os.rename(olds[-1], out)
            done.append(out)
            leftovers = [(k, p) for k, p in leftovers if p != olds[-1]]
    for _, path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
        done.append(path)
    return done


def _sibling_name(out: Path, kind: str) -> Path:
    return out.parent / f".{out.name}.tappa-{kind}.{os.getpid()}.{secrets.token_hex(4)}"


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths (Linux renameat2 with RENAME_EXCHANGE); False when not supported here."""
    import ctypes
    import errno

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


def swap_in(tmp: Path, out: Path) -> None:
    """Put the finished folder `tmp` at `out`, replacing a previous `out` as a whole.

    With an atomic exchange `out` exists at every instant; otherwise (two renames) a crash in between leaves the
    previous result in `.NAME.tappa-old.*`, which `recover` puts back.
    """
    if not out.exists():
        os.rename(tmp, out)
        note_swap()
        return
    if _exchange(tmp, out):
        note_swap()
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the previous result
        return
    old = _sibling_name(out, "old")
    os.rename(out, old)
    os.rename(tmp, out)
    note_swap()
    shutil.rmtree(old, ignore_errors=True)


class ResultDir(os.PathLike):
    """A result folder built in a hidden temporary sibling and swapped in whole by `commit()`.

    Creating it checks `out` (see `check_out_dir`: a folder holding files that `command` did not write, by its
    marker, is refused with `UsageError`) and cleans what killed runs left. Write into the object as into a folder
    (it is path-like: `Path(rd)`, `rd / "x.csv"`); nothing appears at `out` until `commit()`, which adds the marker
    and replaces the previous result. Used as a context manager, it yields the temporary folder and commits on
    success, discards on any exception (Ctrl-C included). An uncommitted folder is also removed at interpreter exit.

    Parameters
    ----------
    out : str or path
        The result folder.
    command : str
        Recorded in the marker; a folder written by another command counts as foreign.
    legacy, signature
        Ignored: file names never make a folder the command's own, only its marker does (issue 29).
    keep : iterable of str
        Files that other tools add to the folder (e.g. a model card): accepted, and carried over into the new result
        when it does not write them itself.
    option : str
        Name of the option in error messages ("--out", "out_dir").
    """

    def __init__(self, out: str | os.PathLike, command: str, legacy: Iterable[str] = (),
                 signature: str | None = None, keep: Iterable[str] = (), option: str = "--out"):
        self.command, self.option = command, option
        self.keep = tuple(keep)
        self.out = check_out_dir(out, option)
        cwd = Path.cwd().resolve()
        if cwd == self.out or self.out in cwd.parents:
            raise UsageError(f"{option} {self.out} contains the current folder, which the swap would remove; "
                             "choose another folder")
        self._check_foreign()
        recover(self.out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            self.tmp = _sibling_name(self.out, "tmp")
            try:
                self.tmp.mkdir()  # mode 0777 & ~umask, unlike mkdtemp's 0700
                break
            except FileExistsError:
                continue
        _ACTIVE.add(str(self.tmp))
        atexit.register(self.discard)
        self.committed = False

    def _check_foreign(self) -> None:
        refuse_foreign(self.out, self.command, self.option, self.keep)

    def __fspath__(self) -> str:
        return str(self.tmp)

    def __str__(self) -> str:
        return str(self.tmp)

    def __repr__(self) -> str:
        return f"ResultDir({str(self.out)!r}, building in {self.tmp.name})"

    def __truediv__(self, name: str) -> Path:
        return self.tmp / name

    def commit(self) -> Path:
        """Write the marker and swap the built folder in at `out`; returns `out`."""
        if self.committed:
            return self.out
        for name in self.keep:
            if (self.out / name).is_file() and not (self.tmp / name).exists():
                shutil.copy2(self.out / name, self.tmp / name)
        files = sorted(e for e in os.listdir(self.tmp) if e != MARKER)
        atomic_write_json(self.tmp / MARKER, {"command": self.command, "files": files,
                                              "written": time.strftime("%Y-%m-%dT%H:%M:%S")})
        self._check_foreign()  # someone may have put files there while we computed
        swap_in(self.tmp, self.out)
        self._forget()
        self.committed = True
        return self.out

    def discard(self) -> None:
        """Remove the temporary folder (nothing at `out` changes)."""
        if not self.committed:
            shutil.rmtree(self.tmp, ignore_errors=True)
        self._forget()

    def _forget(self) -> None:
        _ACTIVE.discard(str(self.tmp))
        atexit.unregister(self.discard)

    def __enter__(self) -> Path:
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def result_dir(out: str | os.PathLike, command: str = "notebook", **kwargs) -> ResultDir:
    """`ResultDir(out, command, ...)`: what the chapters call on `out_dir` (and `.commit()` in their last cell)."""
    kwargs.setdefault("option", "out_dir")
    return ResultDir(out, command, **kwargs)
