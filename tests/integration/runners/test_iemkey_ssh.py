"""
Hosts without a minion, over salt-ssh (issue 27): a real sshd on loopback (salt-factories' sshd
daemon, the system's OpenSSH) serves a "host" with a stand-in agent and no minion. ``salt-ssh``
runs iemkey there, ``salt-run iemkey.ssh`` rotates it and records its clean-up, and the master's
clean-up pass then deletes the superseded computer (routine) or lists it to revoke (an incident).

The host's iemkey settings (where its stand-in agent lives) reach it two ways, as they would in a
fleet: the master's pillar for ``gamma`` (only the state carries pillar over salt-ssh), and, for
``gamma-direct``, the same host, the roster's ``minion_opts`` (what a module called directly reads).
"""

import json
import os
import pathlib
import shutil
import subprocess
import time

import pytest
import salt.version
import yaml
from bigfix_rest import StandInBigFix
from helpers import API_PASSWORD, agent_settings
from saltevents import wait_for

OLD_SALT = salt.version.__saltstack_version__.info < (3007,)
# Salt 3006's salt-ssh ships no _utils to the host: iemkey refuses, saying so (the last test)
needs_3007 = pytest.mark.skipif(OLD_SALT, reason="Salt 3006's salt-ssh does not ship _utils (3007 added it)")

# the master's own Python for the host, as a fleet's root has /usr/bin/python3: a pyenv shim on
# PATH (these machines) is a bash script that salt-ssh's /bin/sh shim cannot run
SYSTEM_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"


@pytest.fixture(scope="module")
def sshd(salt_factories):
    assert shutil.which("sshd") or os.path.exists("/usr/sbin/sshd"), "no sshd: install openssh-server (.ci/run does)"
    if os.geteuid() == 0:  # sshd run by root wants its privilege separation folder, as the package's unit makes it
        pathlib.Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    # its keys live under the session's temp dir, in /tmp (mode 1777), which StrictModes refuses; salt-ssh
    # copies its thin package with scp, which speaks SFTP (OpenSSH 9)
    config = {"StrictModes": "no", "Subsystem": "sftp internal-sftp"}
    factory = salt_factories.get_sshd_daemon(display_name="iemkey-sshd", sshd_config_dict=config)
    with factory.started(start_timeout=60):
        yield factory


@pytest.fixture(scope="module")
def gamma_root(tmp_path_factory):
    return tmp_path_factory.mktemp("gamma") / "agent"


@pytest.fixture(scope="module")
def roster(sshd, gamma_root, tmp_path_factory, pillar_root):
    base = tmp_path_factory.mktemp("roster")
    host = {
        "host": "127.0.0.1",
        "port": sshd.listen_port,
        "user": "root",
        "priv": str(sshd.client_key),
        "set_path": SYSTEM_PATH,
        "thin_dir": str(base / "thin"),  # not /var/tmp: each Salt line of the matrix deploys its own
        "timeout": 30,
    }
    hosts = {
        "gamma": host,
        "gamma-direct": {**host, "minion_opts": {"iemkey": agent_settings(gamma_root)}},
        "nowhere": {**host, "port": 9, "timeout": 5},  # nothing listens: unreachable
        "wrong-key": {**host, "priv": _another_key(base)},  # sshd does not know this key
        "bare": host,  # no pillar says where an agent is, and none is at the default path: no agent
    }
    path = base / "roster"
    path.write_text(yaml.safe_dump(hosts))
    # gamma's pillar: where its agent is (the session's top gives every id the shared iemkey.sls)
    (pillar_root / "gamma.sls").write_text(yaml.safe_dump({"iemkey": agent_settings(gamma_root)}))
    top = (pillar_root / "top.sls").read_text()
    if "gamma" not in top:
        (pillar_root / "top.sls").write_text(top + "  'gamma':\n    - gamma\n")
    return path


def _another_key(folder):
    path = folder / "not-authorized"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return str(path)


@pytest.fixture
def gamma(make_agent, gamma_root):
    return make_agent(gamma_root, key_age=30 * 86400)


@pytest.fixture
def salt_ssh_cli(salt_master, roster):
    return salt_master.salt_ssh_cli(timeout=180, roster_file=str(roster), target_host="gamma")


@pytest.fixture
def server(httpserver, agent, agent_2, gamma):
    return StandInBigFix([agent, agent_2, gamma], "iemkey-operator", API_PASSWORD).serve(httpserver)


def _ssh_run(salt_run_cli, roster, *args):
    return salt_run_cli.run("iemkey.ssh", *args, f"roster_file={roster}", "ignore_host_keys=True")


@needs_3007
def test_a_module_called_directly_over_salt_ssh_reads_the_rosters_minion_opts(salt_ssh_cli, gamma):
    ret = salt_ssh_cli.run("--ignore-host-keys", "iemkey.status", minion_tgt="gamma-direct")
    assert ret.returncode == 0, ret
    status = ret.data
    assert status["installed"] and status["computer_id"] == gamma.computer_id, status
    # the pillar does not reach a module called directly: without minion_opts the agent is not found
    bare = salt_ssh_cli.run("--ignore-host-keys", "iemkey.status", minion_tgt="gamma")
    assert bare.data["installed"] is False, bare
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 86400))
    check = salt_ssh_cli.run("--ignore-host-keys", "iemkey.check", f"since={since}", minion_tgt="gamma-direct")
    assert check.data["compliant"] is False and "before since" in check.data["reason"], check
    old_id = gamma.computer_id
    rotated = salt_ssh_cli.run("--ignore-host-keys", "iemkey.rotate", "wait=30", minion_tgt="gamma-direct")
    assert rotated.returncode == 0 and rotated.data["rotated"] is True, rotated
    assert rotated.data["old_computer_id"] == old_id and rotated.data["new_computer_id"] == gamma.computer_id
    # no master heard of it, and the return says what that leaves
    assert rotated.data["event_sent"] is False and f"the old computer {old_id} stays" in rotated.data["cleanup"]
    assert sorted(rotated.data["removed"]) == ["ClientCert.crt", "ClientKey.pvk"]  # KeyStorage's files only
    again = salt_ssh_cli.run("--ignore-host-keys", "iemkey.check", f"since={since}", minion_tgt="gamma-direct")
    assert again.data["compliant"] is True, again


@needs_3007
def test_the_formula_over_salt_ssh_takes_rotated_since_from_the_hosts_pillar(
    salt_ssh_cli, gamma, gamma_root, pillar_root
):
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 86400))
    pillar = pillar_root / "gamma.sls"
    kept = pillar.read_text()
    pillar.write_text(yaml.safe_dump({"iemkey": {**agent_settings(gamma_root), "rotated_since": since, "wait": 30}}))
    old_id = gamma.computer_id
    try:
        ret = salt_ssh_cli.run("--ignore-host-keys", "state.apply", "iemkey", minion_tgt="gamma")
        again = salt_ssh_cli.run("--ignore-host-keys", "state.apply", "iemkey", minion_tgt="gamma")
    finally:
        pillar.write_text(kept)
    assert ret.returncode == 0, ret
    (state,) = ret.data.values()
    assert state["result"] is True and state["changes"]["key"]["old"]["computer_id"] == old_id, state
    assert state["changes"]["key"]["new"]["computer_id"] == gamma.computer_id != old_id
    (unchanged,) = again.data.values()
    assert unchanged["result"] is True and unchanged["changes"] == {}, unchanged  # converged: no second rotation


@needs_3007
def test_salt_ssh_rotates_a_host_without_a_minion_and_the_clean_up_deletes_its_old_computer(
    salt_run_cli, roster, gamma, server
):
    old_id = gamma.computer_id
    dry = _ssh_run(salt_run_cli, roster, "tgt=gamma", "test=True")
    assert dry.returncode == 0 and dry.data["would_rotate"] == ["gamma"], dry
    assert gamma.computer_id == old_id and gamma.untouched()
    ret = _ssh_run(salt_run_cli, roster, "tgt=gamma", "wait=30")
    assert ret.returncode == 0, ret
    host = ret.data["hosts"]["gamma"]
    assert ret.data["rotated"] == ["gamma"] and host["old_computer_id"] == old_id, host
    assert host["new_computer_id"] == gamma.computer_id != old_id and host["cleanup"] == "recorded", host
    again = _ssh_run(salt_run_cli, roster, "tgt=gamma", f"since={ret.data['since']}")  # the same since: done
    assert again.returncode == 0 and again.data["compliant"] == ["gamma"], again
    assert wait_for(lambda: server.deletes() == [old_id], timeout=60), server.deletes()
    history = salt_run_cli.run("iemkey.history", "minion=gamma").data
    (case,) = history["computers"]
    assert case["old_computer_id"] == old_id and case["status"] == "deleted", case


@needs_3007
def test_under_an_incident_a_salt_ssh_rotations_old_computer_is_listed_to_revoke(
    salt_run_cli, roster, gamma, server, salt_minion
):
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60))
    declared = salt_run_cli.run(
        "iemkey.incident", f"since={since}", f"tgt={salt_minion.id}", "name=dmz", "deliver=False"
    )
    assert declared.returncode == 0, declared
    old_id = gamma.computer_id
    ret = _ssh_run(salt_run_cli, roster, "tgt=gamma", "incident=dmz", "wait=30")
    assert ret.returncode == 0 and ret.data["since"].startswith(since[:16]), ret
    incident = salt_run_cli.run("iemkey.incident").data["incidents"]["dmz"]
    assert "gamma" in incident["minions"], incident
    # the master's clean-up schedule confirms the duplicate: listed to revoke, never deleted
    assert wait_for(lambda: _status(salt_run_cli, old_id) == "revoke", timeout=60), _status(salt_run_cli, old_id)
    assert old_id not in server.deletes()
    (case,) = salt_run_cli.run("iemkey.history", f"computer={old_id}").data["computers"]
    assert case["minion"] == "gamma" and case["compromise"]["incident"] == "dmz", case


def _status(salt_run_cli, computer_id):
    found = salt_run_cli.run("iemkey.history", f"computer={computer_id}").data["computers"]
    return found[0]["status"] if found else None


@needs_3007
def test_bad_hosts_and_bad_input_say_so_and_change_nothing(salt_run_cli, roster, gamma):
    old_id = gamma.computer_id
    away = _ssh_run(salt_run_cli, roster, "tgt=nowhere")
    assert away.returncode == 1 and away.data["unreachable"] == ["nowhere"], away
    assert "salt-ssh could not run the state" in away.data["hosts"]["nowhere"]["comment"], away
    refused = _ssh_run(salt_run_cli, roster, "tgt=wrong-key")
    assert refused.returncode == 1 and refused.data["unreachable"] == ["wrong-key"], refused
    assert "Permission denied" in refused.data["hosts"]["wrong-key"]["comment"], refused
    bare = _ssh_run(salt_run_cli, roster, "tgt=bare")
    assert (
        bare.returncode == 0 and bare.data["no_agent"] == ["bare"] and bare.data["hosts"]["bare"].get("cleanup") is None
    )
    none = _ssh_run(salt_run_cli, roster, "tgt=nobody-*")
    assert none.returncode == 1 and "matches no host in the salt-ssh roster" in none.data["error"], none
    bad = _ssh_run(salt_run_cli, roster, "tgt=gamma", "since=yesterday")
    assert bad.returncode == 1 and "since" in bad.data["error"], bad
    closed = _ssh_run(salt_run_cli, roster, "tgt=gamma", "incident=no-such-incident")
    assert closed.returncode == 1 and "no incident 'no-such-incident'" in closed.data["error"], closed
    assert gamma.computer_id == old_id and gamma.untouched()


@needs_3007
def test_the_report_with_ssh_asks_the_roster_hosts_and_counts_their_agents_as_covered(
    salt_run_cli, roster, gamma, server, agent, agent_2
):
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 86400))
    plain = salt_run_cli.run("iemkey.report", f"since={since}")  # no minion covers gamma's agent: outside Salt
    (listed,) = [c for c in plain.data["outside_salt"]["computers"] if c["computer_id"] == gamma.computer_id]
    assert listed["name"] == "gamma0" and plain.returncode == 1, plain.data["outside_salt"]
    assert "salt-run iemkey.ssh" in plain.data["outside_salt"]["how"]
    args = ("iemkey.report", f"since={since}", "ssh=True", "ssh_tgt=gamma", f"roster_file={roster}")
    before = salt_run_cli.run(*args, "ignore_host_keys=True")
    assert before.returncode == 1 and before.data["ssh"]["would_rotate"] == ["gamma"], before
    assert before.data["ssh"]["hosts"]["gamma"]["computer_id"] == gamma.computer_id
    outside = {c["computer_id"] for c in before.data["outside_salt"]["computers"]}
    assert gamma.computer_id not in outside and agent.computer_id not in outside, before.data["outside_salt"]
    assert "salt-ssh hosts: 0 compliant, 1 noncompliant" in before.data["summary"]
    assert gamma.untouched()  # asked with test=True: nothing changed
    assert _ssh_run(salt_run_cli, roster, "tgt=gamma", "wait=30").returncode == 0
    after = salt_run_cli.run(*args, "ignore_host_keys=True")
    assert after.data["ssh"]["compliant"] == ["gamma"], after
    assert after.data["ssh"]["hosts"]["gamma"]["computer_id"] == gamma.computer_id
    assert gamma.computer_id not in {c["computer_id"] for c in after.data["outside_salt"]["computers"]}


@needs_3007
def test_the_key_exchange_password_reaches_the_host_in_its_pillar_and_nothing_the_master_keeps(
    salt_master, salt_run_cli, roster, gamma, gamma_root, pillar_root, event_listener
):
    secret = "Kx-ssh-5d1e0c7a-relay-secret"  # grepped for below
    relay = "http://relay.example:52311"
    pillar = pillar_root / "gamma.sls"
    kept = pillar.read_text()
    pillar.write_text(
        yaml.safe_dump({"iemkey": {**agent_settings(gamma_root), "relay": relay, "register_password": secret}})
    )
    gamma.relay_accepts(secret)
    start = time.time()
    try:
        ret = _ssh_run(salt_run_cli, roster, "tgt=gamma", "wait=30")
    finally:
        pillar.write_text(kept)
    assert ret.returncode == 0 and ret.data["rotated"] == ["gamma"], ret
    # positive evidence: the relay took the password, so the pillar reached the host
    assert (gamma.state_dir / "register.log").read_text().count("3 arguments") == 1
    assert secret not in ret.stdout + ret.stderr
    events = event_listener.get_events([(salt_master.id, "*")], after_time=start)
    assert events and all(secret not in json.dumps(e.data, default=str) for e in events)
    logged = pathlib.Path(salt_master.config["log_file"]).read_text(errors="replace")
    assert "rotated its BigFix key" in logged and secret not in logged
    cache = pathlib.Path(salt_master.config["cachedir"])
    jobs = [p for p in (cache / "jobs").rglob("*") if p.is_file() and p.stat().st_mtime >= start - 1]
    assert jobs, "no job cache file from this run: the search below would prove nothing"
    # the master's compiled pillar (its data cache) is where the secret lives on the master; nothing else
    leaked = [
        str(p)
        for p in cache.rglob("*")
        if p.is_file() and "minions" not in p.parts and "pillar" not in p.parts and secret.encode() in p.read_bytes()
    ]
    assert leaked == []


@pytest.mark.skipif(not OLD_SALT, reason="Salt 3007 and later ship _utils over salt-ssh")
def test_on_salt_3006_it_refuses_saying_why(salt_run_cli, tmp_path):
    roster = tmp_path / "roster"
    roster.write_text("gamma: {host: 127.0.0.1}\n")
    ret = _ssh_run(salt_run_cli, roster, "tgt=gamma")
    assert ret.returncode == 1 and "Salt 3007 added utils" in ret.data["error"], ret
    report = salt_run_cli.run("iemkey.report", "since=@1763625600", "ssh=True", f"roster_file={roster}")
    assert report.returncode == 1 and "Salt 3007 added utils" in report.data["error"], report
