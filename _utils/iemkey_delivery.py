"""
Publishing the master's rotation jobs, and reading what comes back.

A rotation job is ``state.single iemkey.rotated name=bigfix-agent-key since=<T> owed=True`` to a list
of minions: each one rotates only itself, unless its own record shows a rotation iemkey made at or
after ``T`` (then it sends that rotation's signed ``iemkey/rotated`` again). One job carries the
minions decided within ``iemkey:delivery:batch_window`` seconds (at most ``batch_size``), with the
earliest ``since`` among them; a minion whose owed rotation a re-sent rotation did not settle
(``exact``) gets a job of its own with its own ``since``. A probe is ``saltutil.find_job <jid>``:
Salt's own way to ask whether a job reached a minion.
"""

import threading

try:  # _utils/, synced with saltutil.sync_all (formula install)
    import iemkey_errors
except ImportError:  # pip install (Salt extension)
    from saltext.iemkey.utils import iemkey_errors

STATE_NAME = "bigfix-agent-key"
ROTATION_FUN = "state.single"
PROBE_FUN = "saltutil.find_job"


class PublishError(iemkey_errors.IemkeyError):
    """The master could not publish a job; the message says which and why."""


class Publisher:
    """Publish rotation jobs and probes with one LocalClient per process, kept (making one loads
    Salt's modules: 55-120 ms), used by one caller at a time; a fresh one after a failure."""

    def __init__(self, opts):
        self.opts, self.client, self.lock = opts, None, threading.Lock()

    def _publish(self, minions, fun, arg, kwarg=None):
        import salt.client  # pylint: disable=import-outside-toplevel

        with self.lock:
            if self.client is None:
                self.client = salt.client.get_local_client(mopts=self.opts)
            try:
                jid = self.client.cmd_async(sorted(minions), fun, arg, tgt_type="list", kwarg=kwarg)
            except Exception as exc:  # pylint: disable=broad-except
                self.client = None
                raise PublishError(f"publishing {fun} to {len(minions)} minions failed: {exc}") from None
        if not jid:
            raise PublishError(f"the master published no {fun} job to {', '.join(sorted(minions)[:5])}...")
        return str(jid)

    def rotation(self, minions, since):
        """One rotation job to ``minions``: its jid."""
        kwarg = {"name": STATE_NAME, "since": since, "owed": True, "queue": True}
        return self._publish(minions, ROTATION_FUN, ["iemkey.rotated"], kwarg)

    def probe(self, minions, jid):
        """Ask ``minions`` whether they run job ``jid`` (``saltutil.find_job``): its jid."""
        return self._publish(minions, PROBE_FUN, [str(jid)])


def is_rotation_job(data):
    """Whether a job return event is for one of iemkey's rotation jobs."""
    if data.get("fun") != ROTATION_FUN:
        return False
    args = data.get("fun_args") or []
    named = any(a == "iemkey.rotated" for a in args if isinstance(a, str))
    owed = any(isinstance(a, dict) and a.get("owed") is True for a in args)
    return named and owed


def outcome(data):
    """(rotated or re-sent: True, or False, and the error) of a rotation job's return event."""
    ret = data.get("return")
    if isinstance(ret, dict) and ret and all(isinstance(v, dict) and "result" in v for v in ret.values()):
        failed = [v for v in ret.values() if v.get("result") is False]
        if failed:
            return False, "; ".join(str(v.get("comment") or "the state failed").strip() for v in failed)
        return True, None
    if isinstance(ret, list):  # the state system's refusals (e.g. a malformed argument)
        return False, "; ".join(str(item) for item in ret)[:1000]
    return False, f"the job returned {str(ret)[:500]!r}" if ret is not None else "the job returned nothing"


def probe_answer(data):
    """(the jid the probe asked about, whether that job still runs) of a find_job return, or None."""
    if data.get("fun") != PROBE_FUN:
        return None
    args = data.get("fun_args") or []
    if not args:
        return None
    ret = data.get("return")
    return str(args[0]), bool(isinstance(ret, dict) and ret)
