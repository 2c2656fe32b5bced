"""Server keys kept in local files: made once, private to this user, refused when exposed.

The stream-token key and the webhook key live in such files when no key is set. Anyone who can
read one can mint tokens or sign webhooks for every tenant, so a file is used only if it is a
regular file of ours with mode 0600 (like ssh with a private key).
"""

from __future__ import annotations

import os
import secrets
import stat
import tempfile
from pathlib import Path

from streams.errors import JobstreamError


class KeyFileError(JobstreamError, RuntimeError):
    """A key file is unsafe or unreadable (the message never holds its content)."""


def load_or_create_key(path: Path, what: str) -> tuple[bytes, bool]:
    """The key kept in ``path`` and whether it was just made; 32 random bytes are written there first
    (hex, mode 0600) if it is missing. ``what`` names the key in errors ("stream token key").

    Creation is atomic and exclusive: the key goes to a private temp file in the same dir, which is
    then hard-linked into place; the link fails if another process got there first, and its key is
    used.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    made = False
    if not os.path.lexists(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mode 0600
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(secrets.token_hex(32).encode() + b"\n")
                out.flush()
                os.fsync(out.fileno())
            try:
                os.link(tmp, path)
                made = True
            except FileExistsError:
                pass  # another process created it meanwhile: its key wins
        finally:
            os.unlink(tmp)
    return _read_key(path, what), made


def _read_key(path: Path, what: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise KeyFileError(f"cannot open the {what} file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"the {what} file {path} is not a regular file")
        if st.st_mode & 0o077:
            raise KeyFileError(
                f"the {what} file {path} is open to group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); `chmod 600` it or remove it"
            )
        if st.st_uid != os.geteuid():
            raise KeyFileError(f"the {what} file {path} belongs to another user (uid {st.st_uid})")
        text = f.read(4096)
    try:
        key = bytes.fromhex(text.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        key = b""
    if len(key) < 16:
        raise KeyFileError(
            f"the {what} file {path} does not hold a hex key of 16+ bytes; remove it to have a new one made "
            "(what was signed with the old key stops verifying)"
        )
    return key
