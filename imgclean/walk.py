"""Finding image files: a deterministic, non-recursive walk that accounts for every image-like file.

Sorted depth first, never follows symbolic links, never enters a quarantine (a folder holding an
imgclean manifest) or an excluded folder (recognised by device and inode, not by path string).
Depth is bounded by nothing but the disk: an explicit stack instead of recursion, and folders whose
path is too long for the kernel are listed through directory file descriptors, so a file there is
reported (skipped, with the reason) instead of silently dropped; so is a folder that cannot be
listed (permission denied, an I/O error, swapped for a link during the walk).

Longer than 400 lines: the walk's rules (which entries a folder's listing gives, where a run
ends) and `_match`, the whole-list check that a cache snapshot still describes a run, must be
read and changed side by side: the check is only right while it follows those rules exactly.
"""
from __future__ import annotations

import errno
import logging
import os
import stat
from collections import namedtuple
from dataclasses import dataclass
from functools import partial
from operator import itemgetter
from pathlib import Path
from typing import Iterator

from .listing import FD_WALK_FROM, PATH_MAX, Listing, listing as _listing

log = logging.getLogger(__name__)

# Extensions Pillow's allowed decoders read (data.ALLOWED_FORMATS); jfif/jpe/jif are JPEG.
DECODED_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jfif", ".jpe", ".jif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
    ".ppm", ".pgm", ".pbm", ".pnm",
})
# Image formats imgclean does not decode: listed and reported `unsupported` (never left out of
# the count). Camera raw files are never decoded even though many are TIFF containers: the TIFF
# reader would see a thumbnail or undemosaiced sensor data and score that.
_RAW = "cr2 cr3 crw nef nrw arw srf sr2 dng orf rw2 raf pef srw x3f 3fr erf kdc mrw raw rwl iiq mos mef"
UNSUPPORTED_FORMATS = {
    ".heic": "HEIF", ".heif": "HEIF", ".hif": "HEIF", ".avif": "AVIF", ".svg": "SVG", ".svgz": "SVG",
    ".jxl": "JPEG XL", ".jp2": "JPEG 2000", ".j2k": "JPEG 2000", ".jpx": "JPEG 2000", ".jpf": "JPEG 2000",
    ".j2c": "JPEG 2000", ".ico": "ICO", ".cur": "ICO", ".icns": "ICNS", ".psd": "Photoshop (PSD)",
    ".psb": "Photoshop (PSB)", ".tga": "TGA", ".exr": "OpenEXR", ".hdr": "Radiance HDR", ".qoi": "QOI",
    ".dds": "DDS", ".xcf": "GIMP (XCF)", ".pcx": "PCX", ".jng": "JNG", ".wbmp": "WBMP", ".emf": "EMF",
    ".wmf": "WMF", ".eps": "EPS", ".pict": "PICT",
    **{f".{ext}": f"camera raw ({ext.upper()})" for ext in _RAW.split()},
}
RAW_EXTENSIONS = frozenset(f".{ext}" for ext in _RAW.split())
IMAGE_EXTENSIONS = DECODED_EXTENSIONS | frozenset(UNSUPPORTED_FORMATS)



# An entry's identity, (size, mtime_ns, dev, ino, ctime_ns), as one C call: FileEntry.identity,
# also for a plain tuple of its fields (a cache snapshot's).
identity_of = itemgetter(1, 2, 4, 5, 6)


class FileEntry(namedtuple("_EntryFields", "fspath size mtime_ns skip_reason dev ino ctime_ns")):
    """A candidate file found by a walk, with the lstat fields seen at that moment.

    FileEntry(path, size, mtime_ns, skip_reason="", dev=None, ino=None, ctime_ns=None). Immutable,
    compared and hashed by its fields, read by name. `fspath` is the path as the walk joined it
    (str or bytes), which is all a scan needs, so a walk of 100,000 files does not build 100,000
    Path objects; `path` is a Path made on access. skip_reason: non-empty when the file is not
    to be opened (symlink, FIFO, hard-link duplicate, a folder that could not be listed...).
    dev, ino, ctime_ns (st_dev, st_ino, st_ctime_ns): with size and mtime_ns, the file's
    identity (`identity`): a move checks the file is still this one, and the scan cache reuses
    a result only for the same identity. None for a skipped entry.
    """

    __slots__ = ()

    def __new__(cls, path, size: int, mtime_ns: int, skip_reason: str = "", dev: int | None = None,
                ino: int | None = None, ctime_ns: int | None = None) -> "FileEntry":
        return tuple.__new__(cls, (os.fspath(path), size, mtime_ns, skip_reason, dev, ino, ctime_ns))

    @property
    def path(self) -> Path:
        return Path(self.fspath)

    def __fspath__(self):
        return self.fspath

    identity = property(identity_of, doc="(size, mtime_ns, dev, ino, ctime_ns): equal for a cached result to be reused")


_new_entry = tuple.__new__
_as_entry = partial(_new_entry, FileEntry)  # a tuple of the seven fields as a FileEntry, in C


def is_hidden(name: str | bytes) -> bool:
    return name.startswith(b"." if isinstance(name, bytes) else ".")


def has_image_extension(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def unsupported_format(name: str | os.PathLike) -> str:
    """The format a name's extension says imgclean does not decode ('' when it may be decoded)."""
    return UNSUPPORTED_FORMATS.get(os.path.splitext(os.fspath(name))[1].lower(), "")


def too_long(path: str | os.PathLike) -> str:
    """A reason when the absolute path is too long to open or move, else ''."""
    n = len(os.fsencode(os.path.abspath(path)))
    if n >= PATH_MAX:
        return f"path is {n:,} bytes, over the system limit of {PATH_MAX - 1:,} (PATH_MAX); cannot be opened or moved"
    return ""


def _is_quarantine(listing: Listing) -> bool:
    """The folder's listing holds an imgclean manifest as a regular file (as moves.is_quarantine
    decides, from the lstat the walk already has: a folder or link of that name is user data)."""
    from .fileops import MANIFEST_NAME

    manifest = os.fsencode(MANIFEST_NAME)
    return any(os.fsencode(n) == manifest and stat.S_ISREG(m) for n, m in zip(listing.names, listing.modes))


def _identities(folders) -> set[tuple[int, int]]:
    """(st_dev, st_ino) of each folder that exists: how the walk recognises excluded folders."""
    out: set[tuple[int, int]] = set()
    for folder in folders:
        try:
            st = os.stat(folder)
            out.add((st.st_dev, st.st_ino))
        except OSError:
            pass
    return out


def walk_images(root: Path, exclude: tuple[Path, ...] = ()) -> Iterator[FileEntry]:
    """Yield image-named entries below `root`, sorted, depth first.

    Hidden files and dot-folders are ignored, symlinked folders are not entered, and neither are
    quarantines (folders holding an imgclean manifest) nor folders in `exclude` (by device and
    inode). `root` itself is walked whatever it holds: callers decide (a scan refuses a quarantine;
    fit-head may learn from one). Symlinks, FIFOs, other non-regular files and paths too long to
    open come back with a skip_reason so they can be reported, and so does a folder that cannot
    be listed (its own path, skipped: walk_runs); a file reached twice through hard links is
    yielded once for scoring and then as a duplicate.
    """
    for run in walk_runs(root, exclude):
        yield from run.entries


# Most entries in one run of walk_runs (a scan's cache keeps one snapshot per run).
RUN_LIMIT = 4096


class Run:
    """Consecutive entries of one folder's listing, as walk_runs gives them.

    folder, ordinal: which run (ordinals number each folder's runs from 0, so the pair names a run
    again in the next walk of an unchanged tree); entries: its FileEntry tuples; span: the names
    of the listing entries it covers, images or not (None when one of them could not be stat'ed:
    such a run is never matched by its names); positions: each entry's index in span (None when
    entry i is span[i]); snapshot: what `known` returned for it; matched: its entries come from
    that snapshot's columns (MatchedEntries), checked against the listing with whole-list
    operations; unlisted: the run stands for a folder that could not be listed (its one entry is
    that folder, skipped), so part of the tree went unscanned."""

    __slots__ = ("folder", "ordinal", "entries", "span", "positions", "snapshot", "matched", "unlisted")

    def __init__(self, folder, ordinal: int, entries: list, span: list | None, positions: list[int] | None,
                 snapshot=None, matched: bool = False, unlisted: bool = False):
        self.folder, self.ordinal, self.entries = folder, ordinal, entries
        self.span, self.positions, self.snapshot, self.matched = span, positions, snapshot, matched
        self.unlisted = unlisted


def walk_runs(root: Path, exclude: tuple[Path, ...] = (), limit: int = RUN_LIMIT, known=None) -> Iterator[Run]:
    """walk_images' entries, in the same order, as Runs: consecutive entries of one folder's
    listing, ended by a sub-folder in that listing or by `limit` listing entries.

    `known(folder, ordinal)`, when given, returns a stored snapshot of the run about to be walked
    or None. A snapshot is a sequence whose first eight items are the columns of a Run seen
    before: (span, positions, sizes, mtimes, skip reasons, devs, inos, ctimes), one item per
    entry in the last six. When the listing shows that run again, unchanged (the same names, no
    sub-folder among them, every entry the same regular file: same size, mtime, device, inode
    and ctime; none already walked), the Run comes `matched`, its entries built from those
    columns with a few whole-list operations instead of one by one.

    A folder that cannot be listed (permission denied, an I/O error, replaced during the walk)
    comes as a Run of its own (folder: that folder, ordinal 0) holding one entry: the folder,
    skipped with the reason (`unlisted_reason`), so a scan reports it instead of leaving part of
    the tree out unsaid."""
    excluded = _identities(exclude)
    seen_inodes: set[tuple[int, int]] = set()
    base = os.fspath(root)
    top = _listing(base)
    if top.error:  # the root itself, named "." (relative to itself) like the walk's other paths
        yield _unlisted_run(os.path.join(base, "." if isinstance(base, str) else b"."), top.error)
        return
    dotchar = "." if isinstance(base, str) else b"."
    stack = [_Frame(base, top, 0, _prefix_len(base), _joiner(base))]  # same order as recursion
    while stack:
        frame = stack[-1]
        folder, listing, i, ordinal = frame.folder, frame.listing, frame.next, frame.runs
        n = len(listing.names)
        snapshot = None
        if known is not None and i < n:
            asked = frame.asked
            if asked is None or asked[0] != ordinal:
                frame.asked = asked = (ordinal, known(folder, ordinal))
            snapshot = asked[1]
            if snapshot is not None:
                entries = _match(listing, i, limit, frame.prefix, frame.head, snapshot, seen_inodes)
                if entries is not None:
                    frame.next = i + len(snapshot[0])
                    frame.runs += 1
                    yield Run(folder, ordinal, entries, snapshot[0], snapshot[1], snapshot, True)
                    continue
        stop = min(n, i + limit)  # at most `limit` listing entries per run
        run, positions, j, vanished, at_folder = _entries_from(listing, i, stop, frame.prefix, frame.head, seen_inodes, dotchar)
        frame.next = j
        if run:
            frame.runs += 1
            span = None if vanished else listing.names[i:j]
            yield Run(folder, ordinal, run, span, None if len(positions) == j - i else positions, snapshot)
            continue
        if not at_folder:
            if j >= n:
                stack.pop()
            continue  # (or `limit` entries without an image: on with the listing)
        frame.next = j + 1
        path = os.path.join(folder, listing.names[j])
        identity = (listing.devs[j], listing.inos[j])
        if identity in excluded:
            log.info("skipping excluded folder %s", os.fsdecode(path))
            continue
        sub = _listing(path, identity)
        if sub.error:
            yield _unlisted_run(path, sub.error)
            continue
        if _is_quarantine(sub):
            log.info("skipping quarantine folder %s", os.fsdecode(path))
            continue
        stack.append(_Frame(path, sub, 0, _prefix_len(path), _joiner(path)))


@dataclass(slots=True)
class _Frame:
    """One folder of walk_runs' stack: its listing, the next index in it, its absolute path's
    byte length + 1 (so too_long() is one addition per file), what joins a name onto it, the
    runs yielded from it so far, and the (ordinal, snapshot) last asked of `known`."""

    folder: object
    listing: Listing
    next: int
    prefix: int
    head: object
    runs: int = 0
    asked: tuple | None = None


def _entries_from(listing: Listing, i: int, stop: int, prefix: int, head, seen_inodes: set, dotchar):
    """The entries of listing[i:stop] up to its first sub-folder: (entries, their positions
    from i, where it stopped, whether an entry vanished, whether it stopped at a folder)."""
    names, modes, sizes, mtimes, devs, inos, ctimes, _ = listing  # (its error is '': checked before)
    new, seen = _new_entry, seen_inodes.add
    isdir, islnk = stat.S_ISDIR, stat.S_ISLNK
    reg, kind = stat.S_IFREG, 0o170000  # S_ISREG(mode) is mode & kind == reg, inline
    extensions = IMAGE_EXTENSIONS
    run: list[FileEntry] = []
    add = run.append
    positions: list[int] = []
    at = positions.append
    vanished = False
    j = stop
    for j in range(i, stop):
        mode = modes[j]
        if mode & kind != reg:
            if mode == 0:
                vanished = True  # vanished between listing and stat
                continue
            if isdir(mode):
                return run, positions, j, vanished, True  # a sub-folder ends the run
        name = names[j]
        dot = name.rfind(dotchar)  # splitext's extension: a name starting with a dot is hidden, never here
        if dot < 1 or name[dot:].lower() not in extensions:
            continue
        path = head + name  # os.path.join(folder, name), as one concatenation
        if mode & kind != reg:
            add(new(FileEntry, (path, 0, 0, "symbolic link (not followed)" if islnk(mode) else "not a regular file", None, None, None)))
        elif prefix + 4 * len(name) >= PATH_MAX and too_long(path):  # 4: most UTF-8 bytes per character
            add(new(FileEntry, (path, sizes[j], mtimes[j], too_long(path), None, None, None)))
        else:
            key = (dev := devs[j], ino := inos[j])
            if key in seen_inodes:
                add(new(FileEntry, (path, sizes[j], mtimes[j], "hard link to a file already scanned", None, None, None)))
            else:
                seen(key)
                add(new(FileEntry, (path, sizes[j], mtimes[j], "", dev, ino, ctimes[j])))
        at(j - i)
    return run, positions, stop, vanished, False


UNLISTED = "folder could not be listed: "


def unlisted_reason(error: str) -> str:
    """The skip reason of a folder that could not be listed."""
    return UNLISTED + error


def is_unlisted(skip_reason: str) -> bool:
    """Whether a skip reason (or a skipped record's message) is a folder's that could not be
    listed: part of the tree went unscanned."""
    return skip_reason.startswith(UNLISTED)


def _unlisted_run(folder, error: str) -> Run:
    """The Run that stands for a folder that could not be listed: the folder, skipped."""
    return Run(folder, 0, [FileEntry(folder, 0, 0, unlisted_reason(error))], None, None, unlisted=True)


class MatchedEntries:
    """The entries of a matched run, as a read-only sequence of FileEntry built from the
    snapshot's columns only when asked for: a rescan that counts a run and writes its stored
    report rows never builds its 4,096 paths and entries (nor frees them). One entry by index
    is built alone; iterating or slicing builds the list once."""

    __slots__ = ("_columns", "_built")

    def __init__(self, head, names: list, *columns: list):
        self._columns = (head, names, *columns)  # head, names, sizes, mtimes, skips, devs, inos, ctimes
        self._built: list | None = None

    def __len__(self) -> int:
        return len(self._columns[1])

    def _list(self) -> list:
        if self._built is None:
            head, names, *rest = self._columns
            self._built = list(map(_as_entry, zip(map(head.__add__, names), *rest)))
        return self._built

    def __getitem__(self, i):
        if i.__class__ is slice or self._built is not None:
            return self._list()[i]
        head, names, *rest = self._columns
        i = range(len(names))[i]  # a negative index counts from the end; IndexError past it
        return _as_entry((head + names[i], *(column[i] for column in rest)))

    def __iter__(self):
        return iter(self._list())

    def __eq__(self, other):
        return self._list() == (other._list() if other.__class__ is MatchedEntries else other)

    __hash__ = None


def _match(listing: Listing, i: int, limit: int, prefix: int, head, snapshot, seen_inodes: set) -> MatchedEntries | None:
    """The entries of the run starting at listing index `i` when it is exactly the run the
    snapshot's columns describe (walk_runs' `known`) and every entry a plain file (no skip
    reason), from those columns; else None. Whole-list operations only: this is what makes
    a rescan of an unchanged folder cost little more than its stat calls."""
    try:
        span, positions, sizes, mtimes, skips, devs, inos, ctimes = snapshot[:8]
        names, modes = listing.names, listing.modes
        k = len(span)
        e = i + k
        if not (0 < k <= limit and e <= len(names) and (k == limit or e == len(names) or stat.S_ISDIR(modes[e]))):
            return None  # the walk would not end the run where the snapshot's run ended
        if any(skips) or names[i:e] != span:
            return None
        window = modes[i:e]
        if any(map(stat.S_ISDIR, window)):
            return None  # a name that became a folder
        columns = [window, listing.sizes[i:e], listing.mtimes[i:e], listing.devs[i:e], listing.inos[i:e], listing.ctimes[i:e]]
        named = span
        if positions is not None:
            columns = [list(map(c.__getitem__, positions)) for c in columns]
            named = list(map(span.__getitem__, positions))
        if not (all(map(stat.S_ISREG, columns[0])) and columns[1] == sizes and columns[2] == mtimes
                and columns[3] == devs and columns[4] == inos and columns[5] == ctimes):
            return None  # a file changed, or was replaced (even by one of the same size and mtime)
        if prefix + 4 * max(map(len, named)) >= PATH_MAX:
            return None  # perhaps too long to open: the walk decides file by file
        keys = list(zip(devs, inos))
        if not seen_inodes.isdisjoint(keys):
            return None  # a hard link to a file walked before: the walk marks it file by file
        seen_inodes.update(keys)
        return MatchedEntries(head, named, sizes, mtimes, skips, devs, inos, ctimes)
    except (TypeError, ValueError, IndexError, AttributeError):
        return None  # a snapshot of another shape: not a match


def _joiner(folder):
    """What os.path.join(folder, name) puts before name."""
    sep = os.sep if isinstance(folder, str) else os.sep.encode()
    return folder if not folder or folder.endswith(sep) else folder + sep


def _prefix_len(folder) -> int:
    """Bytes of `folder`'s absolute path plus the separator a name is joined with."""
    n = len(os.fsencode(os.path.abspath(folder)))
    return n if n == 1 else n + 1  # "/" + name adds no second separator


def count_images(root: Path, exclude: tuple[Path, ...] = ()) -> int:
    """How many entries walk_images(root, exclude) yields, counted from the folder listings alone
    (names and the file types the kernel returns with them: no stat per file), so a progress bar
    can know its total without a second full walk. Follows the walk's rules: hidden names, folder
    links, excluded folders and quarantines are not entered; every image-named non-folder counts
    (skipped ones included), and so does a folder that cannot be listed. When the count cannot be
    made that way it falls back to the walk."""
    from .fileops import MANIFEST_NAME

    excluded = _identities(exclude)
    base = os.fspath(root)
    if len(os.fsencode(os.path.abspath(base))) >= FD_WALK_FROM:
        return sum(1 for _ in walk_images(root, exclude))
    manifest = MANIFEST_NAME if isinstance(base, str) else os.fsencode(MANIFEST_NAME)
    extensions, splitext = IMAGE_EXTENSIONS, os.path.splitext
    total = 0
    folders = [(base, True)]
    while folders:
        folder, is_root = folders.pop()
        if not is_root and len(os.fsencode(os.path.abspath(folder))) >= FD_WALK_FROM:
            total += sum(1 for _ in walk_images(Path(folder), exclude))  # deep: the walk's own listing
            continue
        files = 0
        subdirs = []
        quarantine = False
        try:
            with os.scandir(folder) as it:
                for e in it:
                    name = e.name
                    if is_hidden(name):
                        continue
                    try:
                        is_dir = e.is_dir(follow_symlinks=False)
                    except OSError:
                        continue
                    if is_dir:
                        subdirs.append(e)
                    elif splitext(name)[1].lower() in extensions:
                        files += 1
                    elif name == manifest and e.is_file(follow_symlinks=False):
                        quarantine = True
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                total += 1  # the walk reports a folder it cannot list as one skipped entry
            continue
        if quarantine and not is_root:
            continue
        total += files
        for e in subdirs:
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in excluded:
                folders.append((e.path, False))
    return total


def list_image_folder(root: Path) -> tuple[list[str], list[list[FileEntry]]]:
    """An ImageFolder: sorted class names (non-hidden sub-folders, not quarantines) and each class's files."""
    from .fileops import is_quarantine

    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder; give a folder with one sub-folder per class")
    class_dirs = []
    for d in sorted(root.iterdir(), key=lambda d: d.name):
        if not d.is_dir() or d.is_symlink() or is_hidden(d.name):
            continue
        if is_quarantine(d):
            log.info("skipping quarantine folder %s", os.fsdecode(d))
            continue
        class_dirs.append(d)
    if not class_dirs:
        raise ValueError(
            f"{root} has no class sub-folders; put each class's images in a folder of its own "
            f"(e.g. {root}/cat/*.jpg, {root}/dog/*.jpg)"
        )
    names = [d.name for d in class_dirs]
    files = [[e for e in walk_images(d) if not e.skip_reason] for d in class_dirs]
    return names, files


__all__ = [
    "FileEntry", "IMAGE_EXTENSIONS", "DECODED_EXTENSIONS", "UNSUPPORTED_FORMATS", "PATH_MAX",
    "walk_images", "walk_runs", "count_images", "identity_of", "unlisted_reason", "is_unlisted", "list_image_folder", "is_hidden", "has_image_extension", "unsupported_format", "too_long",
]
