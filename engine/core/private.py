"""Owner-only folders and files: the IPAI home, run and worker logs, the Vault key, Ray's temp folder.

The home holds the Vault key, the embedded database and (by default) the lakehouse; logs carry source errors;
Ray's temp folder holds its sockets and session files. All of them are readable by their owner only (folders
0700, files 0600) whatever the umask, and a folder is tightened when it exists with a looser mode (Ray's temp
folder sits inside such a folder: Ray itself opens its own to everyone). A folder
that belongs to another user is refused rather than used: in a shared /tmp it may have been made to catch
what we write.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO

from engine.core.errors import ConfigError

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(root: Path, *parts: str) -> Path:
    """Create `root` and then each of `parts` below it as owner-only folders; return the last one.

    `root`'s own parents are created with the default mode (they are the user's, e.g. ~)."""
    folder = root
    for step in (root, *(root.joinpath(*parts[:n + 1]) for n in range(len(parts)))):
        folder = step
        if not folder.exists():
            folder.parent.mkdir(parents=True, exist_ok=True)
            folder.mkdir(mode=DIR_MODE, exist_ok=True)
        info = folder.stat()
        if hasattr(os, "getuid") and info.st_uid != os.getuid():
            raise ConfigError(f"{folder} belongs to another user (uid {info.st_uid}); remove it or choose another "
                              "folder (IPAI_HOME): it would hold this user's keys and logs")
        if stat.S_IMODE(info.st_mode) != DIR_MODE:
            os.chmod(folder, DIR_MODE)
    return folder


def private_temp_dir(name: str) -> Path:
    """`<tmp>/ipai-u<uid>/<name>`: a folder for Ray, inside an owner-only one.

    Ray makes its temp folder 0777 itself (`try_make_directory_shared`) whatever mode it had: the owner-only
    folder around it is what keeps other users out. The path stays short: Ray's Unix sockets live below it,
    and their paths may not pass 107 bytes."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return private_dir(Path(tempfile.gettempdir()) / f"ipai-u{uid}") / name


def open_private(path: Path) -> BinaryIO:
    """Open `path` for appending, created 0600 (an existing file is tightened to 0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        return os.fdopen(fd, "ab")
    except BaseException:
        os.close(fd)
        raise
