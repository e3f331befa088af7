"""
KeyStorage on disk: whether deleting it is safe, deleting it (and nothing else), its key files.

Nothing but ``<storage path>/KeyStorage`` is ever deleted: ``unsafe_reason`` refuses
empty and relative paths, ``..``, file system roots, a KeyStorage that is a link, not a
directory or resolves elsewhere; ``delete_keystorage`` never follows a link and reports
every name it removed or could not remove. Pure functions: the ``iemkey`` execution
module passes the path module of the minion's OS (``posixpath`` or ``ntpath``) in.
"""

import os
import re
import stat

KEYSTORAGE = "KeyStorage"


def unsafe_reason(storage_path, pathmod, live=True):
    """Why deleting ``<storage_path>/KeyStorage`` is unsafe, or None.

    ``pathmod`` is the minion's OS path module (``posixpath``, ``ntpath``); ``live=False``
    checks only the path itself, not what is on disk.
    """
    if not storage_path or not str(storage_path).strip():
        return "the storage path is empty"
    if not pathmod.isabs(storage_path):
        return f"the storage path {storage_path!r} is not absolute"
    if ".." in re.split(r"[\\/]", storage_path):
        return f"the storage path {storage_path!r} contains '..'"
    norm = pathmod.normpath(storage_path)
    if pathmod.dirname(norm) == norm:
        return f"the storage path {storage_path!r} is the root of a file system"
    if not live:
        return None
    if not os.path.isdir(norm):
        return f"the storage path {norm} is not a directory"
    if pathmod is os.path:  # what the path really is: a link to / (or C:\\) is the root too
        real = os.path.realpath(norm)
        if pathmod.dirname(real) == real:
            return f"the storage path {norm} resolves to {real}, the root of a file system"
    keystorage = pathmod.join(norm, KEYSTORAGE)
    try:
        mode = os.lstat(keystorage).st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(mode):
        return f"{keystorage} is a symbolic link (to {os.readlink(keystorage)}); refusing to follow it"
    if not stat.S_ISDIR(mode):
        return f"{keystorage} is not a directory"
    real = os.path.realpath(keystorage)
    if os.path.dirname(real) != os.path.realpath(norm) or os.path.basename(real) != KEYSTORAGE:
        return f"{keystorage} resolves to {real}, outside the storage path"
    return None


def delete_keystorage(keystorage):
    """Delete KeyStorage without following links; (removed, failed) as names inside it."""
    removed, failed = [], []

    def attempt(action, path):
        rel = os.path.relpath(path, keystorage)
        try:
            action(path)
        except OSError as exc:
            failed.append({"name": rel, "error": exc.strerror or str(exc)})
            return False
        if action is os.unlink:
            removed.append(rel)
        return True

    for dirpath, dirnames, filenames in os.walk(keystorage, topdown=False, followlinks=False):
        for name in filenames:
            attempt(os.unlink, os.path.join(dirpath, name))
        for name in dirnames:
            path = os.path.join(dirpath, name)
            attempt(os.unlink if os.path.islink(path) else os.rmdir, path)
    if not failed:
        attempt(os.rmdir, keystorage)
    return sorted(removed), failed


def key_files(keystorage):
    """Regular files in KeyStorage (not following links), or [] when it holds none."""
    try:
        if not stat.S_ISDIR(os.lstat(keystorage).st_mode):
            return []
    except OSError:
        return []
    found = []
    for dirpath, _dirnames, filenames in os.walk(keystorage, followlinks=False):
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                found.append((path, st.st_mtime))
    return found
