"""The rotation record and lock (_utils/iemkey_record.py), with paths given directly."""

import multiprocessing
import os

import iemkey_record
import pytest
from salt.exceptions import CommandExecutionError


def test_a_record_is_written_whole_and_read_back(tmp_path):
    path = str(tmp_path / "rotation.json")
    assert iemkey_record.read(path) is None
    iemkey_record.write(path, {"step": "deleted", "removed": ["ClientKey.pvk"]})
    assert iemkey_record.read(path) == {"step": "deleted", "removed": ["ClientKey.pvk"]}
    assert os.listdir(tmp_path) == ["rotation.json"]  # no temp file left behind


def _hold(path, ready, release):
    with iemkey_record.lock(path, 0):
        ready.set()
        release.wait(30)


def test_the_lock_refuses_while_another_process_holds_it_and_not_after_it_dies(tmp_path):
    path = str(tmp_path / "rotate.lock")
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(path, ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(CommandExecutionError, match=r"held for 0\.2 s, iemkey:lock_wait\); nothing was changed"):
            with iemkey_record.lock(path, 0.2):
                pass
    finally:
        holder.kill()
        holder.join(30)
    with iemkey_record.lock(path, 0):  # the kernel dropped the dead holder's lock
        pass
