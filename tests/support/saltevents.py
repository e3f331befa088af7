"""Synchronising integration tests on the master's event bus instead of sleeping; forging on it."""

import json
import time


def forge(minion, tag, data):
    """From ``minion`` (root there), put ``tag`` with ``data`` (any id included) on the master bus,
    as a batched ``_minion_event``: what any minion can send."""
    preload = {"events": [{"tag": tag, "data": data}]}
    ret = minion.salt_call_cli(timeout=60).run(
        "event.fire_master", "{}", "forged/outer", f"preload={json.dumps(preload)}"
    )
    assert ret.returncode == 0, ret


def runner_returns(event_listener, master, fun, after, count=1, timeout=60, **match):
    """Returns of runner ``fun`` (e.g. "iemkey.react") that began after ``after``: each its
    ``return`` data, if it has the ``match`` items; waits until there are ``count`` of them
    or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        found = [
            event.data["return"]
            for event in event_listener.get_events([(master.id, "salt/run/*/ret")], after_time=after)
            if event.data.get("fun") == f"runner.{fun}"
            and isinstance(event.data.get("return"), dict)
            and all(event.data["return"].get(key) == value for key, value in match.items())
        ]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def decisions(event_listener, master, after, count=1, timeout=60, **match):
    """The reactor's decisions announced since ``after`` (``iemkey/reactor/decided``): each a dict
    with ``tag``, ``action`` and what was done, if it has the ``match`` items; waits for ``count``."""
    deadline = time.monotonic() + timeout
    while True:
        found = [
            event.data
            for event in event_listener.get_events([(master.id, "iemkey/reactor/decided")], after_time=after)
            if all(event.data.get(key) == value for key, value in match.items())
        ]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def job_returns(event_listener, master, minion_id, fun, after, count=1, timeout=90):
    """Returns of ``fun`` jobs from ``minion_id`` since ``after``; waits for ``count`` of them."""
    deadline = time.monotonic() + timeout
    while True:
        found = [
            event.data
            for event in event_listener.get_events([(master.id, f"salt/job/*/ret/{minion_id}")], after_time=after)
            if event.data.get("fun") == fun
        ]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def published_targets(event_listener, master, jid, after, timeout=30):
    """The minions the master published job ``jid`` to (its salt/job/<jid>/new event)."""
    deadline = time.monotonic() + timeout
    while not (found := event_listener.get_events([(master.id, f"salt/job/{jid}/new")], after_time=after)):
        assert time.monotonic() < deadline, f"job {jid} was never published"
        time.sleep(0.2)
    return sorted(next(iter(found)).data["minions"])


def wait_for(predicate, timeout=60, every=0.2):
    """Poll ``predicate`` until it is true (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True


def log_since(daemon):
    """Where ``daemon``'s log ends now: ``log_lines(..., since=...)`` reads only what follows."""
    path = daemon.config["log_file"]
    with open(path, "rb") as log:
        return log.seek(0, 2)


def log_lines(daemon, text, timeout=30, since=0, count=1):
    """Lines of ``daemon``'s log file (after offset ``since``) that contain ``text``, once there are
    ``count`` of them, or what there is after ``timeout`` seconds.

    Salt daemons log through a queue to a separate process: a line can reach the file after
    the event that followed it reached the bus, so tests wait for it instead of reading once."""
    path = daemon.config["log_file"]
    found = []

    def written():
        with open(path, "rb") as log:
            log.seek(since)
            lines = log.read().decode("utf-8", errors="replace").splitlines()
        found[:] = [line for line in lines if text in line]
        return len(found) >= count

    wait_for(written, timeout=timeout)
    return found
