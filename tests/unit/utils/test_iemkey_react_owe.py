"""
``Reactions.owe``: what one compromise signal makes of the minion's owed rotation, and the decision
the engine announces (its exact words: operators read them in the event and the log).
"""

import datetime

import iemkey_owed
import iemkey_react
import iemkey_store
import pytest

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
SINCE = "2026-12-07T11:00:00+00:00"


@pytest.fixture
def reactions(tmp_path):
    return iemkey_react.Reactions({}, iemkey_store.LocalStore(str(tmp_path / "store")), now=lambda: NOW)


# the decision on web01's first signal: a rotation owed, published to web01 alone
ROTATE = {
    "action": "rotate",
    "detail": f"a rotation made at or after {SINCE} is owed: asking web01, and only it",
    "since": SINCE,
    "jid": None,
    "deliver": True,
}


def _sig(ident="a1", since=SINCE, source="alert"):
    return iemkey_owed.signal(source, since, NOW, ident, "ids")


def test_a_first_signal_owes_a_rotation_and_asks_that_minion_only(reactions):
    decided = reactions.owe("web01", _sig(), None, "t")
    assert decided == ROTATE
    record = reactions.store.get("owed", "web01")
    assert record["state"] == "pending" and record["at"] == NOW.isoformat()


def test_one_settled_between_the_two_reads_is_owed_anew(reactions, monkeypatch):
    # another master's rotation settled it after this master's first read, and another master added
    # the record first: the update finds nothing, and the signal owes a new rotation
    monkeypatch.setattr(reactions.store, "add", lambda *a: False)
    decided = reactions.owe("web01", _sig(), None, "t")
    assert decided == ROTATE
    assert reactions.store.get("owed", "web01")["state"] == "pending"


def test_a_signal_while_the_delivery_is_in_flight_is_a_duplicate_naming_the_job(reactions):
    reactions.owe("web01", _sig(), None, "t")
    with reactions.store.update("owed", "web01") as record:
        record.update(iemkey_owed.delivered(record, "J7", NOW, "t"))
    decided = reactions.owe("web01", _sig("a2"), None, "t")
    assert decided["action"] == "duplicate" and decided["jid"] == "J7" and "deliver" not in decided
    assert decided["detail"] == (
        f"a duplicate: a rotation is owed since {SINCE} and its delivery is in flight (delivered, job J7): "
        "nothing published"
    )
    pending = reactions.owe("web02", _sig(), None, "t") and reactions.owe("web02", _sig("b2"), None, "t")
    assert pending["detail"].endswith("in flight (pending): nothing published")  # no job yet: none named


@pytest.mark.parametrize("state", ["review", "held"])
def test_a_copy_while_waiting_for_an_operator_says_so_and_a_new_signal_asks_again(reactions, state):
    reactions.owe("web01", _sig(), None, "t")
    reactions.store.put("owed", "web01", {**reactions.store.get("owed", "web01"), "state": state})
    copy = reactions.owe("web01", _sig(), None, "t")
    assert copy["action"] == "duplicate" and copy["detail"] == (
        f"a copy of a signal already recorded: the rotation owed since {SINCE} is {state} and waits for an "
        "operator (salt-run iemkey.owed minion=web01 retry=True): nothing published"
    )
    assert reactions.store.get("owed", "web01")["state"] == state
    again = reactions.owe("web01", _sig("a2"), None, "t")
    assert again == {
        "action": "redelivered",
        "detail": f"a rotation is owed since {SINCE} and was {state}: asking web01 again now",
        "since": SINCE,
        "jid": None,
        "deliver": True,
    }
    record = reactions.store.get("owed", "web01")
    assert record["state"] == "pending" and record["next_try"] == NOW.isoformat()
    assert record["trail"][-1]["detail"] == f"a new alert while {state}"
