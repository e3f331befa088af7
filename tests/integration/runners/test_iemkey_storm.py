"""
An incident's storm on a real master, at a small N (``make bench`` measures the same at 1,000 and
10,000): simulated minions that exist only as accepted keys sign their own alerts, and one real
minion (root there) relays them and a flood in batched ``_minion_event`` loads, exactly what any
minion can send. What is asserted is the behaviour, never a speed: nothing dropped, each signer
asked to rotate exactly once (in batched jobs, each minion rotating only itself), a second wave
publishes nothing for a delivery still in flight, a flood costs checks and a few log lines, and a
genuine alert after it is still acted on.
"""

import json
import pathlib
import time

import iemkey_auth
import pytest
from helpers import RATE, rsa_key_pair
from saltevents import decisions, log_lines, log_since, published_targets

COMPROMISED = "iemkey/compromised"
SIMULATED = 12


@pytest.fixture(scope="module")
def simulated(salt_master):
    """{minion id: private PEM} of SIMULATED minions the master has accepted (and forgets afterwards)."""
    minions = pathlib.Path(salt_master.config["pki_dir"]) / "minions"
    found = {}
    for number in range(SIMULATED):
        minion_id, (private, public) = f"storm-{number:02d}", rsa_key_pair()
        (minions / minion_id).write_bytes(public)
        found[minion_id] = private
    yield found
    for minion_id in found:
        (minions / minion_id).unlink()


def _alert(minion_id, private, reason="storm"):
    return {
        "tag": COMPROMISED,
        "data": {"id": minion_id, "data": iemkey_auth.sign(COMPROMISED, minion_id, {"reason": reason}, private)},
    }


def _relay(minion, events):
    """One batched _minion_event load from ``minion``, as `event.fire_master ... preload` sends it."""
    ret = minion.salt_call_cli(timeout=120).run(
        "event.fire_master", "{}", "storm/relay", f"preload={json.dumps({'events': events})}"
    )
    assert ret.returncode == 0, ret


def test_a_storm_of_signed_alerts_asks_each_signer_once_and_a_second_wave_nothing_in_flight(
    salt_master, salt_minion_2, simulated, event_listener
):
    start = time.time()
    _relay(salt_minion_2, [_alert(m, key) for m, key in simulated.items()])
    decided = decisions(event_listener, salt_master, start, count=SIMULATED, tag=COMPROMISED, action="rotate")
    assert sorted(d["minion"] for d in decided) == sorted(simulated)  # nothing dropped, nobody twice
    jobs = {d["jid"] for d in decided}
    assert len(jobs) < SIMULATED  # batched: one job for the minions decided together
    targeted = [m for jid in jobs for m in published_targets(event_listener, salt_master, jid, start)]
    assert sorted(targeted) == sorted(simulated)  # each signer in exactly one job, nobody else
    for job in event_listener.get_events([(salt_master.id, "salt/job/*/new")], after_time=start):
        if job.data.get("fun") == "state.single":  # each minion is asked to rotate only itself
            assert job.data["arg"][0] == "iemkey.rotated" and job.data["arg"][1]["owed"] is True

    again = time.time()
    _relay(salt_minion_2, [_alert(m, key, "second wave") for m, key in simulated.items()])
    second = decisions(event_listener, salt_master, again, count=SIMULATED, tag=COMPROMISED)
    assert sorted(d["minion"] for d in second) == sorted(simulated)
    # these minions never answer: one whose delivery is still in flight is not asked twice; one the
    # engine found away is asked again (its alert just showed it can reach the master)
    assert {d["action"] for d in second} <= {"duplicate", "redelivered"}, second
    for decision in second:  # a duplicate names the delivery in flight; a redelivery its new job
        if decision["action"] == "duplicate":
            assert decision["duplicate_of"].startswith("the rotation owed since "), decision
        else:
            assert decision["minion"] in published_targets(event_listener, salt_master, decision["jid"], again)


def test_a_flood_costs_checks_and_a_few_lines_and_a_genuine_alert_after_it_is_acted_on(
    salt_master, salt_minion, salt_minion_2, simulated, event_listener
):
    victim, (other, other_key) = salt_minion.id, list(simulated.items())[-1]
    since, start = log_since(salt_master), time.time()
    # root on the relay: 600 unsigned alerts claiming to be another minion, in one load
    _relay(salt_minion_2, [{"tag": COMPROMISED, "data": {"id": victim, "reason": f"flood {n}"}} for n in range(600)])
    _relay(salt_minion_2, [_alert(other, other_key, "genuine, after the flood")])
    (decision,) = decisions(event_listener, salt_master, start, tag=COMPROMISED, minion=other)
    assert decision["action"] in ("rotate", "duplicate", "redelivered"), decision  # the flood drowned nothing
    nothing = [d for d in decisions(event_listener, salt_master, start, count=2, timeout=3) if d["minion"] == victim]
    assert nothing == []  # not one reaction for the flood

    time.sleep(11)  # past the gate's interval: the next refusal of the kind logs the count of the rest
    _relay(salt_minion_2, [{"tag": COMPROMISED, "data": {"id": victim, "reason": "one more"}}])
    loud_kind, counted_kind = (f"{COMPROMISED} {e} (as from {victim!r})" for e in ("event", "events"))
    assert log_lines(salt_master, f"more {counted_kind}", since=since, timeout=30)
    time.sleep(2)  # the reactor's remaining lines reach the log file through Salt's log queue
    loud = log_lines(salt_master, f"refusing {loud_kind}", since=since, timeout=0)
    counted = log_lines(salt_master, f"more {counted_kind}", since=since, timeout=0)
    more = [int(line.split("refused ", 1)[1].split(" ", 1)[0]) for line in counted]
    assert len(loud) + sum(more) == 601, (len(loud), more)  # every refusal accounted for
    # the first LOUD (5) of each 10 s interval line by line, each interval's rest as one count line
    assert len(loud) <= 5 * (len(counted) + 1) + 1 and len(loud) + len(counted) < 60, (len(loud), more)


def test_one_minion_cannot_make_the_master_decide_more_than_its_rate(
    salt_master, salt_minion_2, simulated, event_listener
):
    minion_id, key = next(iter(simulated.items()))
    since, start = log_since(salt_master), time.time()
    _relay(salt_minion_2, [_alert(minion_id, key, f"rate {n}") for n in range(RATE + 5)])
    decided = decisions(event_listener, salt_master, start, count=RATE + 5, timeout=15, minion=minion_id)
    over = log_lines(salt_master, "(iemkey:reactor:rate)", since=since, count=5)
    # the storm test above used one of this minute's decisions of this minion
    assert len(decided) <= RATE and len(over) >= 5, (decided, over)
