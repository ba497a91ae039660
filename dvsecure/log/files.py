"""Reading a published log directory or receipt: regular files only, sizes capped.

A log directory comes from someone else, so its layout is input too. Inside it
only real directories and regular files are accepted: a symbolic link (to a
file or a directory), a FIFO, a device or a socket is refused, naming its path,
and so is a file over the cap for its kind. Files are opened relative to the
directory's descriptor, component by component, with O_NOFOLLOW (a link
swapped in after the check is refused by the open itself), O_NONBLOCK (a FIFO
cannot hang the open), then fstat-ed and read to at most cap + 1 bytes.

The directory a caller names is taken as named (it may be a link the caller
made); what is inside it is not. Standard library only: the auditor's light
install reads through this module.
"""
from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LogError, ParameterError

LARGE_FILE_ENV = "DVSECURE_MAX_LOG_FILE_BYTES"

_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_DIR_FLAGS = _FLAGS | os.O_DIRECTORY
_STEP = 1 << 20                 # read size once a file turns out longer than fstat said


@dataclass(frozen=True)
class Kind:
    """A kind of published file and the most bytes one may hold. `env` names a
    variable that overrides the cap (for the files that grow with the log)."""
    what: str
    default_cap: int
    env: str | None = None

    @property
    def cap(self) -> int:
        text = os.environ.get(self.env, "") if self.env else ""
        if not text:
            return self.default_cap
        try:
            cap = int(text)
        except ValueError:
            cap = 0
        if cap < 1:
            raise ParameterError(f"{self.env} must be a positive number of bytes, got {text!r}")
        return cap

    def limit(self) -> str:
        how = f" (set {self.env} to raise it)" if self.env else ""
        return f"the {self.cap}-byte cap for {self.what}{how}"


# The entries file is ~0.6 KB per entry with 5 sources and grows with the
# sources: hundreds of MB at 100k entries. A receipt's proofs grow alike.
ENTRIES_FILE = Kind("an entries file", 2 << 30, LARGE_FILE_ENV)
RECEIPT_FILE = Kind("a receipt.json", 2 << 30, LARGE_FILE_ENV)
NOTE_FILE = Kind("a checkpoint note", 64 << 10)     # ~270 bytes, plus ~100 per cosigner
KEY_FILE = Kind("a verifier key file", 4 << 10)     # one line of ~100 bytes
POLICY_FILE = Kind("a policy", 1 << 20)             # ~200 bytes per source
WITNESS_FILE = Kind("a witness state", 16 << 20)    # ~300 bytes per log it has seen


class PublishedFileError(LogError):
    """A file of a published directory (or a named state file) that is not a
    regular file, is too large, or cannot be read. `path` is the offending path
    (relative to the directory `root` for one inside a directory); the message
    names it in full."""

    def __init__(self, path: str, problem: str, root: str | Path | None = None):
        super().__init__(f"{os.path.join(root, path) if root is not None else path}: {problem}")
        self.path, self.problem = path, problem

    def under(self, root: str | Path) -> PublishedFileError:
        return PublishedFileError(self.path, self.problem, root)


def _describe(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


def _not_regular(mode: int) -> str:
    return f"{_describe(mode)}, not a regular file"


def _open_dir(root: str | Path) -> int:
    try:
        return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise PublishedFileError(str(root), f"not a readable directory ({e.strerror})") from None


def _open_at(dfd: int, name: str, shown: str, directory: bool, follow: bool = False) -> int:
    """Open `name` in directory `dfd`, without following a link unless `follow`.
    stat first so a device is never opened; fstat after, so a swap in between is
    caught."""
    want = stat.S_ISDIR if directory else stat.S_ISREG
    flags = _DIR_FLAGS if directory else _FLAGS
    try:
        before = os.stat(name, dir_fd=dfd, follow_symlinks=follow)
    except FileNotFoundError:
        raise PublishedFileError(shown, "missing") from None
    except OSError as e:
        raise PublishedFileError(shown, f"cannot be read ({e.strerror})") from None
    if not want(before.st_mode):
        raise PublishedFileError(shown, f"{_describe(before.st_mode)}, not a directory" if directory
                                 else _not_regular(before.st_mode))
    try:
        fd = os.open(name, flags & ~os.O_NOFOLLOW if follow else flags, dir_fd=dfd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENXIO):   # replaced since the lstat
            raise PublishedFileError(shown, "replaced while being opened, by something of another kind") from None
        raise PublishedFileError(shown, f"cannot be read ({e.strerror})") from None
    st = os.fstat(fd)
    if not want(st.st_mode) or (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
        os.close(fd)
        raise PublishedFileError(shown, "replaced while being opened" if want(st.st_mode)
                                 else f"replaced while being opened, by {_describe(st.st_mode)}")
    return fd


def _read_fd(fd: int, kind: Kind, shown: str) -> bytes:
    cap = kind.cap
    size = os.fstat(fd).st_size
    if size > cap:
        raise PublishedFileError(shown, f"{size} bytes, over {kind.limit()}")
    chunks, total, step = [], 0, size + 1     # one byte past fstat's size shows a file still growing
    while total <= cap:
        try:
            chunk = os.read(fd, min(step, cap + 1 - total))
        except OSError as e:
            raise PublishedFileError(shown, f"cannot be read ({e.strerror})") from None
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        step = _STEP
    if total > cap:
        raise PublishedFileError(shown, f"more than {cap} bytes, over {kind.limit()}")
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _parts(rel: str) -> list[str]:
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"not a plain relative path inside a log directory: {rel!r}")
    return parts


def read_published(root: str | Path, rel: str, kind: Kind) -> bytes:
    """The bytes of `rel` ("keys/x.vkey") inside directory `root`: every component
    a real directory, the last a regular file of at most `kind.cap` bytes.
    Raises PublishedFileError naming `rel`."""
    parts = _parts(rel)
    fds = [_open_dir(root)]
    try:
        for i, name in enumerate(parts):
            fds.append(_open_at(fds[-1], name, "/".join(parts[:i + 1]), directory=i < len(parts) - 1))
        return _read_fd(fds[-1], kind, rel)
    except PublishedFileError as e:
        raise e.under(root) from None
    finally:
        for fd in fds:
            os.close(fd)


def read_named(path: str | Path, kind: Kind, *, follow_links: bool) -> bytes:
    """A file the user named (a witness state, a policy): a regular file of at most
    `kind.cap` bytes. `follow_links` for a path the user may have linked on purpose;
    without it the last component must not be a link."""
    path = Path(path)
    fd = _open_dir(path.parent)
    try:
        file_fd = _open_at(fd, path.name, str(path), directory=False, follow=follow_links)
    finally:
        os.close(fd)
    try:
        return _read_fd(file_fd, kind, str(path))
    finally:
        os.close(file_fd)


@dataclass
class Listing:
    """What a published directory holds, without following anything: regular
    files and real directories (relative POSIX paths, sorted), and every other
    entry with what it is."""
    root: str
    files: list[str] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)

    def names_in(self, folder: str) -> list[str]:
        """Names of the regular files directly inside `folder` ("" for the top)."""
        prefix = f"{folder}/" if folder else ""
        return [f[len(prefix):] for f in self.files if f.startswith(prefix) and "/" not in f[len(prefix):]]

    def raise_refused(self) -> None:
        if self.refused:
            rel, problem = self.refused[0]
            more = f" (and {len(self.refused) - 1} more such entries)" if len(self.refused) > 1 else ""
            raise PublishedFileError(rel, f"{problem}{more}; a log directory holds regular files only", self.root)


def scan_published(root: str | Path) -> Listing:
    """Walk `root` without following links: descend only into real directories,
    and refuse (list in `refused`) every entry that is neither a directory nor a
    regular file."""
    out = Listing(str(root))

    def walk(dfd: int, prefix: str) -> None:
        with os.scandir(dfd) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            rel = prefix + e.name
            try:
                mode = e.stat(follow_symlinks=False).st_mode
            except OSError as err:
                out.refused.append((rel, f"cannot be examined ({err.strerror})"))
                continue
            if stat.S_ISREG(mode):
                out.files.append(rel)
            elif stat.S_ISDIR(mode):
                try:
                    sub = _open_at(dfd, e.name, rel, directory=True)
                except PublishedFileError as err:
                    out.refused.append((rel, err.problem))
                    continue
                out.dirs.append(rel)
                try:
                    walk(sub, rel + "/")
                finally:
                    os.close(sub)
            else:
                out.refused.append((rel, _not_regular(mode)))

    fd = _open_dir(root)
    try:
        walk(fd, "")
    finally:
        os.close(fd)
    return out
