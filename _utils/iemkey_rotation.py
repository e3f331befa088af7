"""
The steps of a rotation (IBM technote 1670787), in the order ``iemkey.rotate`` takes them: what it
would do (``plan``), stop the agent and delete KeyStorage and nothing else, recording each step
(``stop_and_delete``), or finish a rotation a crash interrupted after its delete (``resume``); start the
agent again and see it run; then what follows the delete (the manual key exchange, waiting for the new
key), each of which fails the job without hiding the rotation (``after_the_delete``).

Each step is given the minion's ``iemkey_agent.Agent``; the module keeps the lock and the order.
"""

import logging
import os
import time

from salt.exceptions import CommandExecutionError

try:  # _utils/, synced with saltutil.sync_all (formula install)
    import iemkey_agent
    import iemkey_storage
    import iemkey_time
except ImportError:  # pip install (Salt extension)
    from saltext.iemkey.utils import iemkey_agent, iemkey_storage, iemkey_time

log = logging.getLogger(__name__)


def plan(resolved, interrupted):
    """What rotate would do (test=True): the commands it would run and the files it would remove."""
    keystorage, control = resolved["keystorage"], resolved["control"]
    planned = [] if interrupted else [iemkey_agent.describe_cmd(control, "stop"), f"delete {keystorage}"]
    return {
        "rotated": None,
        "test": True,
        "keystorage": keystorage,
        "old_computer_id": interrupted.get("old_computer_id") if interrupted else resolved["computer_id"],
        "would_remove": []
        if interrupted
        else sorted(os.path.relpath(path, keystorage) for path, _mtime in iemkey_storage.key_files(keystorage)),
        "would_run": [*planned, iemkey_agent.describe_cmd(control, "start")],
        "comment": "finish the interrupted rotation" if interrupted else "rotate the key",
    }


def resume(record):
    """The facts of the interrupted rotation this one finishes (nothing is deleted again)."""
    log.info("iemkey: finishing the rotation interrupted after deleting %s", record.get("keystorage"))
    return {
        "old_computer_id": record.get("old_computer_id"),
        "rotated_at": record.get("deleted_at"),
        "removed": record.get("removed"),
    }


def last_rotation(record):
    """When the last completed rotation on ``record`` was made (kept through a new rotation's steps), or None."""
    if not record:
        return None
    return record.get("rotated_at") if record.get("step") == "done" else record.get("previous_rotated_at")


def stop_and_delete(agent, control, keystorage, old_computer_id, previous=None):
    """Stop the agent and delete KeyStorage, recording each step; the rotation's facts so far. The
    steps' records keep when the ``previous`` record's rotation was made: a minion's kept alerts go
    on seeing it while this one runs. A stop that fails puts ``previous`` back: nothing happened."""
    record = {"keystorage": keystorage, "old_computer_id": old_computer_id}
    if last_rotation(previous):
        record["previous_rotated_at"] = last_rotation(previous)
    agent.write_record({**record, "step": "stopping"})
    stop = agent.control("stop", control)
    if stop["retcode"] != 0:
        if previous:
            agent.write_record(previous)
        else:
            os.unlink(agent.record_path())
        raise CommandExecutionError(
            f"stopping the BigFix agent failed: {iemkey_agent.describe(stop)}; KeyStorage was not touched"
        )
    removed, failed = iemkey_storage.delete_keystorage(keystorage) if os.path.lexists(keystorage) else ([], [])
    now = iemkey_time.now()
    if failed:
        agent.write_record({**record, "step": "failed", "removed": removed})
        start = agent.control("start", control)
        restarted = (
            "the agent was started again"
            if start["retcode"] == 0
            else f"starting it again failed: {iemkey_agent.describe(start)}"
        )
        raise CommandExecutionError(
            f"could not delete all of {keystorage}: removed {removed or 'nothing'}; not removed "
            + ", ".join(f"{item['name']} ({item['error']})" for item in failed)
            + f"; {restarted}"
        )
    agent.write_record({**record, "step": "deleted", "removed": removed, "deleted_at": now})
    return {"old_computer_id": old_computer_id, "rotated_at": now, "removed": removed}


def start_and_confirm(agent, control, keystorage, removed):
    """Start the agent again and see it run; the keys are gone by now, so a failure says how to finish."""
    start = agent.control("start", control)
    if start["retcode"] != 0:
        raise CommandExecutionError(
            f"KeyStorage {keystorage} was deleted ({len(removed)} files) but starting the agent failed: "
            f"{iemkey_agent.describe(start)}. The keys are gone and the agent is down; run iemkey.rotate again "
            "to finish."
        )
    if agent.agent_running(control) is False:
        raise CommandExecutionError(
            f"KeyStorage {keystorage} was deleted but the agent is not running after {iemkey_agent.describe(start)}. "
            "The keys are gone and the agent is down; run iemkey.rotate again to finish."
        )


def after_the_delete(agent, ret, step, action, *args):
    """Run a step that follows the delete. KeyStorage is gone by now: whatever goes wrong here fails
    the job, but never hides the rotation that happened (its facts stay in ``ret``)."""
    try:
        action(*args)
    except Exception as exc:  # pylint: disable=broad-except
        message = f"{step} failed after the rotation: {exc.__class__.__name__}: {exc}"
        ret.setdefault("errors", []).append(message)
        log.error("iemkey: KeyStorage %s was rotated, but %s", ret["keystorage"], message)
        agent.context["retcode"] = 1


def key_exchange(agent, ret):
    """Behind an authenticating relay a wiped agent is a new agent: it must exchange keys again."""
    relay = agent.conf("relay")
    if not relay:
        return
    error = None
    try:
        password = agent.register_password()
        if password:
            exchange = agent.register(relay, password)
            ret["registered"] = exchange["registered"]
            error = None if exchange["registered"] else iemkey_agent.describe(exchange)
    except CommandExecutionError as exc:
        ret["registered"], error = False, str(exc)
    if error:
        ret["register_error"] = error
        log.error("iemkey: the key exchange after the rotation failed: %s", error)
        agent.context["retcode"] = 1  # the rotation stands, but the agent cannot register: fail the job


def await_new_key(agent, ret, wait):
    """Wait for the new key and computer ID; a wait that ends without them fails the job."""
    ret.update(wait_for_new_key(agent, ret["keystorage"], ret["old_computer_id"], wait))
    if ret["new_computer_id"] is None:
        made = "made a new key but registered no new computer ID" if ret["key_created"] else "made no new key"
        raise CommandExecutionError(
            f"the agent {made} within wait={wait:g} s: it may be down, or unable to register (an authenticating "
            "relay without the key exchange?); see iemkey.status"
        )


def nothing_removed(agent, ret, wait, previous):
    """KeyStorage was absent: the restart alone rotated nothing unless the agent now makes a new key
    within ``wait``. Without one this is ``rotated: False`` (no record, no event, the job fails), and
    the record of the last real rotation stays as it was."""
    if wait > 0:
        ret.update(wait_for_new_key(agent, ret["keystorage"], ret["old_computer_id"], wait))
        if ret["new_computer_id"]:
            return None  # the agent made a new key and registered: that is a rotation
        why = f"and the agent made no new key within wait={wait:g} s"
    else:
        why = "and wait=0 does not see whether the agent makes a new key (pass wait=60)"
    if previous:
        agent.write_record(previous)
    else:
        os.unlink(agent.record_path())
    agent.context["retcode"] = 1
    return {
        "rotated": False,
        "keystorage": ret["keystorage"],
        "removed": [],
        "old_computer_id": ret["old_computer_id"],
        "reason": f"KeyStorage {ret['keystorage']} was absent: nothing was removed; the agent was restarted {why}",
    }


def wait_for_new_key(agent, keystorage, old_computer_id, wait):
    deadline = time.monotonic() + wait
    while True:
        files = iemkey_storage.key_files(keystorage)
        computer_id = agent.resolve()["computer_id"]
        if files and computer_id and computer_id != old_computer_id:
            return {"new_computer_id": computer_id, "key_created": iemkey_agent.key_created(files)}
        if time.monotonic() >= deadline:
            return {"new_computer_id": None, "key_created": None}
        time.sleep(0.2)
