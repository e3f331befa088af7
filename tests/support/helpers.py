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
