"""Moving one file without ever deleting or overwriting anything (used by moves and restore).

Same filesystem: ``link(src, final)`` (fails on a taken name), check ``final`` is the scored file,
fsync, then *capture* the source: ``rename(src, .imgclean-tmp-<id>-src)`` in its own folder takes
the name away atomically, so whatever the name points at from then on is someone else's new file.
The captured file is removed only if it is still the scored file (device, inode, size, mtime; and,
for a copy, its sha256 again); otherwise it is put back (never overwriting: if the name was taken
again, beside it under a free numbered name) and our copy at ``final`` is dropped: status
``changed``. Across filesystems the file is first copied to ``.imgclean-tmp-<id>`` beside the
destination, fsynced, verified (size + sha256), linked to its final name, then captured the same way.

Fault-hook steps, in order: link | copy, fsync, verify, rename, unlink_tmp; then fsync_dir,
capture, captured, (rehash: copies only), unlink_source; and when the captured file is not the
scored one, or a step after capture failed: put_back (per name tried), drop_capture.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

from ..fileops import (
    Abort,
    discard,
    fsync_dir,
    fsync_dir_quiet,
    hash_unchanged,
    lstat_or_none,
    numbered,
    open_regular,
    same_file,
    step,
    unchanged,
    write_all,
)
from .journal import capture_name, copy_tmp_name

log = logging.getLogger("imgclean.quarantine.moves")

COPY_ERRNOS = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}
Retarget = Callable[[Path], Path]


def failed(src: Path, what: str, e: OSError, clean: bool = True) -> Abort:
    if not os.path.lexists(src):
        return Abort("missing", f"{src} no longer exists", clean)
    log.warning("%s: %s", what, e)
    return Abort("rolled_back", f"{what}: {e.strerror or e}", clean)


def transfer(jid: str, src: Path, final: Path, st: os.stat_result, sha: str, retarget: Retarget | None) -> Path:
    """Move ``src`` (described by ``st``, hashing to ``sha``) to ``final`` or a retargeted name.

    Returns the name used. On failure undoes its own work and raises Abort; an OSError never
    escapes, while any other exception (a crash) does, leaving the rest to recovery.
    """
    while True:
        try:
            step("link")
            os.link(src, final, follow_symlinks=False)
            break
        except FileExistsError:
            if retarget is None:
                raise Abort("rolled_back", f"{final} exists; left {src} where it is") from None
            try:
                final = retarget(final)
            except OSError as e:
                raise Abort("rolled_back", f"no free name for {final}: {e}") from e
        except OSError as e:
            # EXDEV: another filesystem. EPERM/EMLINK/ENOTSUP: no hard link to this file
            # (fs.protected_hardlinks, link count limit...); a copy we own can still be linked.
            if e.errno in COPY_ERRNOS:
                return _copy_across(jid, src, final, st, sha, retarget)
            if e.errno == errno.ENOENT and os.path.lexists(src):  # link raced a rename over src
                raise Abort("changed", f"{src} was replaced while it was being moved; left in place") from e
            raise failed(src, f"cannot link {src} to {final}", e) from e
    # final is now a second name for whatever inode src named at link time.
    try:
        if not unchanged(os.lstat(final), st):  # replaced or edited after hashing
            raise Abort("changed", f"{src} changed while it was being moved; left in place")
        step("fsync_dir")
        fsync_dir(final.parent)
    except (OSError, Abort) as e:
        clean = discard(final)  # src still names that inode: nothing is lost
        if isinstance(e, Abort):
            raise Abort(e.state, e.message, clean) from None
        raise failed(src, f"cannot move {src}", e, clean) from e
    drop_source(jid, src, final, lambda cap: unchanged(os.lstat(cap), st))
    return final


def _copy_across(
    jid: str, src: Path, final: Path, st: os.stat_result, sha: str, retarget: Retarget | None
) -> Path:
    """Cross-filesystem move: copy to a temp name, fsync, verify, link to final, drop the source."""
    tmp = copy_tmp_name(final, jid)
    placed = False
    try:
        fd_in = open_regular(src)
        try:
            if not unchanged(os.fstat(fd_in), st):
                raise Abort("changed", f"{src} changed before it could be moved; left in place")
            fd_out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                try:  # as root, keep the owner (before chmod: chown clears setuid bits)
                    os.fchown(fd_out, st.st_uid, st.st_gid)
                except OSError:
                    pass
                h = hashlib.sha256()
                while chunk := os.read(fd_in, 1 << 20):
                    step("copy")
                    write_all(fd_out, chunk)
                    h.update(chunk)
                # Keep mode and times so a restore gives back the same file.
                os.fchmod(fd_out, stat.S_IMODE(st.st_mode))
                os.utime(fd_out, ns=(st.st_atime_ns, st.st_mtime_ns))
                step("fsync")
                os.fsync(fd_out)
                step("verify")
                if not unchanged(os.fstat(fd_in), st):
                    raise Abort("changed", f"{src} changed while it was being copied; left in place")
                if os.fstat(fd_out).st_size != st.st_size or h.hexdigest() != sha:
                    raise OSError(errno.EIO, "copy does not match the journaled size/sha256")
            finally:
                os.close(fd_out)
        finally:
            os.close(fd_in)
        while True:  # link, not rename: it never replaces an existing final name
            try:
                step("rename")
                os.link(tmp, final, follow_symlinks=False)
                placed = True
                break
            except FileExistsError:
                if retarget is None:
                    raise Abort("rolled_back", f"{final} exists; left {src} where it is") from None
                final = retarget(final)
        step("unlink_tmp")
        os.unlink(tmp)
        step("fsync_dir")
        fsync_dir(final.parent)
    except (OSError, Abort) as e:
        clean = discard(tmp) and (not placed or discard(final))
        if isinstance(e, Abort):
            raise Abort(e.state, e.message, clean) from None
        raise failed(src, f"cannot copy {src} to {final}", e, clean) from e

    def proof(cap: Path) -> bool:
        return unchanged(os.lstat(cap), st) and hash_unchanged(cap, st, "rehash") == sha

    drop_source(jid, src, final, proof)
    return final


# ----------------------------------------------------------------------------- the capture


def capture(src: Path, cap: Path) -> bool:
    """Take the name ``src`` away atomically (rename to ``cap``); False if ``src`` is gone."""
    step("capture")
    if os.path.lexists(cap):  # a uuid name: only a planted file could be there; never replace it
        raise FileExistsError(errno.EEXIST, f"{cap} exists", os.fspath(cap))
    try:
        os.rename(src, cap)
    except FileNotFoundError:
        return False
    return True


def put_back(cap: Path, src: Path) -> Path:
    """Give the captured file its name back, or a free numbered name beside it if the name was
    taken again; then drop the capture name. Idempotent (a crash midway is redone safely)."""
    cst = os.lstat(cap)
    for name in numbered(src):
        step("put_back")
        if stat.S_ISDIR(cst.st_mode):  # a folder cannot be hard-linked; rename only to a free name
            if os.path.lexists(name):
                continue
            os.rename(cap, name)
            return name
        try:
            os.link(cap, name, follow_symlinks=False)
        except FileExistsError:
            there = lstat_or_none(name)
            if there is None or not same_file(there, cst):
                continue
        break
    fsync_dir_quiet(src.parent)
    step("drop_capture")
    os.unlink(cap)
    if name != src:
        log.warning("%s was taken again meanwhile; kept the other version as %s", src, name)
    return name


def drop_source(jid: str, src: Path, final: Path, proof: Callable[[Path], bool]) -> None:
    """After ``final`` holds the file: capture ``src`` and remove it only if ``proof`` holds.

    Otherwise the captured file goes back (see put_back), ``final`` is dropped and Abort is
    raised: "changed" (not the scored file), "missing" (src vanished: nothing was moved, so no
    copy stays behind to duplicate it) or "rolled_back" (a step failed).
    """
    cap = capture_name(src, jid)
    try:
        if not capture(src, cap):
            clean = discard(final)
            raise Abort("missing", f"{src} vanished while it was being moved; nothing moved", clean)
    except OSError as e:
        clean = discard(final)
        raise failed(src, f"cannot move {src}", e, clean) from e
    # From here the name src may be taken by a new file at any time: that file is never touched.
    try:
        step("captured")
        if proof(cap):
            step("unlink_source")
            os.unlink(cap)
            fsync_dir_quiet(src.parent)
            return
        reason = Abort("changed", f"{src} was replaced or edited while it was being moved; left in place")
    except Abort as a:
        reason = Abort("changed", f"{src} was replaced or edited while it was being moved ({a.message}); left in place")
    except OSError as e:
        log.warning("cannot move %s: %s", src, e)
        reason = Abort("rolled_back", f"cannot move {src}: {e.strerror or e}")
    try:
        kept = put_back(cap, src)
    except OSError as e:
        log.error("could not put %s back from %s: %s", src, cap, e)
        raise Abort(reason.state, f"{reason.message}; the file is still at {cap}", clean=False) from e
    clean = discard(final)
    note = f"; {src} was taken again, so it was kept as {kept}" if kept != src else ""
    raise Abort(reason.state, reason.message + note, clean)
