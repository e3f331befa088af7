"""
Hosts without a minion, over salt-ssh: what the master asks them and what it makes of their answers.

``salt-run iemkey.ssh`` and ``salt-run iemkey.report ssh=True`` drive salt-ssh
(``salt.client.ssh.client.SSHClient``) from the master. Both run the ``iemkey.rotated`` state
(``state.single``), not the module: salt-ssh's state wrapper compiles the host's pillar on the master
and ships it with the state, so ``iemkey:`` settings and the key-exchange password reach the host as
they reach a minion (a module called directly over salt-ssh sees no pillar: it reads only the
roster's ``minion_opts`` and the master's ``ssh_minion_opts``). The report runs it with
``test=True``, which changes nothing and says whether the key predates ``since``.

What is trusted, and why: a rotation's return comes back on the SSH connection the master opened
itself, to the host the roster names, authenticated by the master's SSH key and the host's key; no
event crosses the master bus, so no minion can forge one. What the host says about its own computer
IDs is trusted no more than a minion's signed ``iemkey/rotated``: the clean-up acts only on what
BigFix itself confirms (the new computer reported the same name, the old one has gone silent).
"""

SALT_3006 = (
    "Salt {version}'s salt-ssh does not ship the master's _utils to the host (its thin package syncs modules, "
    "states, grains, renderers and returners; Salt 3007 added utils), so iemkey cannot run there: drive salt-ssh "
    "from a master on Salt 3007 or later; nothing was sent"
)
STATE = "iemkey.rotated"
STATE_ID = "bigfix-agent-key"
NO_AGENT = "no bigfix agent here"  # how the state's comment begins on a host without an agent (iemkey.NO_AGENT)


def unsupported(version_info, version):
    """Why this master's salt-ssh cannot run iemkey on a host, or None."""
    return SALT_3006.format(version=version) if version_info[0] < 3007 else None


def call(since, wait, test):
    """(fun, args, kwargs) for SSHClient: the state, with ``since`` and ``wait``."""
    kwarg = {"name": STATE_ID, "since": since, "wait": int(wait)}
    if test:
        kwarg["test"] = True
    return "state.single", [STATE], kwarg


def outcome(host, data):
    """What one host's salt-ssh return says: ``{"host", "outcome", "comment", ...}``, the outcome
    being ``rotated`` (with ``old_computer_id``, ``rotated_at`` and ``new_computer_id`` when known),
    ``compliant``, ``would_rotate`` (test), ``no_agent``, ``failed`` (the state failed) or
    ``unreachable`` (salt-ssh could not run it: SSH, the roster, the thin package)."""
    ret = data.get("return") if isinstance(data, dict) else None
    states = _state_of(ret)
    if states is None:
        return {"host": host, "outcome": "unreachable", "comment": _ssh_error(data, ret)}
    result, comment, changes = states.get("result"), str(states.get("comment") or ""), states.get("changes") or {}
    found = {
        "host": host,
        "comment": comment,
        "computer_id": str(states["computer_id"]) if states.get("computer_id") else None,
    }
    if result is None:
        return {**found, "outcome": "would_rotate"}
    key = changes.get("key") if isinstance(changes, dict) else None
    if isinstance(key, dict) and isinstance(key.get("old"), dict) and isinstance(key.get("new"), dict):
        new = key["new"]
        found.update(
            outcome="rotated",
            old_computer_id=str(key["old"].get("computer_id") or ""),
            rotated_at=new.get("rotated_at"),
            new_computer_id=str(new["computer_id"]) if new.get("computer_id") else None,
            result=bool(result),  # False: rotated, but a step after it failed (the comment says which)
        )
        return found
    if result is True:
        return {**found, "outcome": "no_agent" if comment.lower().startswith(NO_AGENT) else "compliant"}
    return {**found, "outcome": "failed"}


def payload(found):
    """The rotation, as the clean-up records one (``iemkey/rotated``'s fields)."""
    event = {"old_computer_id": found["old_computer_id"], "rotated_at": found["rotated_at"]}
    if found.get("new_computer_id"):
        event["new_computer_id"] = found["new_computer_id"]
    return event


def _state_of(ret):
    """The one state's return in a ``state.single`` answer, or None when there is none."""
    if not isinstance(ret, dict) or len(ret) != 1:
        return None
    (state,) = ret.values()
    if not isinstance(state, dict) or "result" not in state:
        return None
    return state


def _ssh_error(data, ret):
    if isinstance(data, dict):
        for key in ("stderr", "stdout"):
            text = data.get(key) or (ret.get(key) if isinstance(ret, dict) else None)
            if text:
                return f"salt-ssh could not run the state: {str(text).strip()[-500:]}"
    if isinstance(ret, (str, list)) and ret:
        return f"salt-ssh could not run the state: {str(ret)[-500:]}"
    return f"salt-ssh returned no state: {str(data)[:500]}"


OUTCOMES = ("rotated", "would_rotate", "compliant", "no_agent", "failed", "unreachable")
FAILING = ("failed", "unreachable")


def tally(found):
    """The hosts by outcome, and a one-line summary."""
    listed = {name: sorted(h for h, o in found.items() if o["outcome"] == name) for name in OUTCOMES}
    summary = ", ".join(f"{len(hosts)} {name.replace('_', ' ')}" for name, hosts in listed.items() if hosts)
    return {**listed, "summary": summary}


def retcode(found):
    """1 when any host failed or could not be reached, or a rotation's clean-up was not recorded or
    a step after it failed (``result`` False); else 0."""
    return int(any(o["outcome"] in FAILING or o.get("result") is False for o in found.values()))


def as_minions(found):
    """The hosts as the report's ``minions`` entries the coverage join reads: the computer ID each
    one's agent has now (the new one after a rotation), or none (then matched by name)."""
    return {
        host: {"computer_id": o.get("new_computer_id") or o.get("computer_id"), "no_agent": o["outcome"] == "no_agent"}
        for host, o in found.items()
    }
