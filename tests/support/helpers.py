"""Helpers the test layers share."""

import importlib.util
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[2]


def load_source(kind, alias):
    """Import ``<repo>/<kind>/iemkey.py`` under ``alias`` (the three share one file name)."""
    spec = importlib.util.spec_from_file_location(alias, REPO / kind / "iemkey.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rsa_key_pair():
    """A Salt-like minion key pair: (private key PEM as minion.pem holds it, public key PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return (
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        ),
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
    )


def hook_signature(secret, body, signed_at=None):
    """The X-Iemkey-Signature header a SIEM sends: ``t=<unix>,sha256=<HMAC-SHA256 of '<t>.<body>'>``."""
    import hashlib
    import hmac
    import time

    stamp = str(int(time.time() if signed_at is None else signed_at))
    body = body if isinstance(body, bytes) else body.encode()
    digest = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={stamp},sha256={digest}"


def module_globals(loaded_function):
    """The globals of the module the Salt loader built a function from (to inject faults there)."""
    return loaded_function.func.__globals__


# integration: the reactor's cooldown window (master iemkey:reactor:cooldown) and the salt-api user
COOLDOWN = 15
# the test master's iemkey:reactor:rate: the session's tests send one minion's alerts and rotations in
# quick succession (a fleet's minion sends a handful an incident); the storm test holds one minion to it
RATE = 30
CLEANUP_EVERY = 5  # seconds between the master schedule's iemkey.cleanup runs
REPORT_MARGIN = 2  # seconds an old computer must stay silent after the master received its rotation
API_USER = "siem"
HOOK_SECRET = "siem-signing-secret-3f9a"
API_PASSWORD = "bigfix-api-Pw-91d2c"


def agent_settings(root, **extra):
    """A test minion's ``iemkey`` settings: where its stand-in agent under ``root`` keeps its files."""
    return {
        "config_file": str(root / "var/opt/BESClient/besclient.config"),
        "init_script": str(root / "etc/init.d/besclient"),
        "client_binary": str(root / "opt/BESClient/bin/BESClient"),
        "command_timeout": 10,
        "alert_resend": 10,  # a kept alert is sent again every 10 s here (60 s by default)
        **extra,
    }


def api_settings(port):
    """A test master's ``iemkey:api``: the stand-in BigFix REST server on loopback at ``port``."""
    return {
        "url": f"http://127.0.0.1:{port}",
        "user": "iemkey-operator",
        "password": API_PASSWORD,
        "verify": False,
        "timeout": 2,
        "retries": 3,
    }


def synced(*masters):
    """``saltutil.sync_all`` on each master (the runner and the reactors' utils); fails the test if not."""
    for master in masters:
        ret = master.salt_run_cli(timeout=120).run("saltutil.sync_all")
        assert ret.returncode == 0, ret


ENGINE = [{"iemkey": {}}]  # a master's engines: the iemkey engine decides iemkey's events


def preloaded(factory):
    """``factory`` (a master not started yet) with iemkey's engine, runner and utility modules already
    where ``salt-run saltutil.sync_all`` puts them, so that the engine runs from its first start (a
    synced engine starts only with the master, and restarting costs a test 10-15 s)."""
    import shutil

    import salt.config

    # where the master will look: its config file as Salt reads it (a syndic's master's factory config
    # names another place than the daemon computes from its root_dir)
    assert pathlib.Path(factory.config_file).is_file(), factory.config_file  # written when the factory is made
    opts = salt.config.master_config(factory.config_file)
    engines = opts.get("engines") or []
    if not any(isinstance(e, dict) and "iemkey" in e for e in engines):
        # salt-factories' syndic writes master.d/syndic.conf with its own engines list, which replaces
        # the master config's: a later master.d file adds the iemkey engine back to it
        import yaml

        conf_d = pathlib.Path(factory.config_file).parent / "master.d"
        conf_d.mkdir(exist_ok=True)
        (conf_d / "zz-iemkey.conf").write_text(yaml.safe_dump({"engines": [*engines, *ENGINE]}))
    extmods = pathlib.Path(opts["extension_modules"])
    for folder, kind in (("_engines", "engines"), ("_runners", "runners"), ("_utils", "utils")):
        target = extmods / kind
        target.mkdir(parents=True, exist_ok=True)
        for source in (REPO / folder).glob("*.py"):
            shutil.copy2(source, target / source.name)
    return factory
