"""What the runner's unit tests share: real minion key pairs, and the one fake, LocalClient."""

from helpers import rsa_key_pair

KEYS = {"alpha": rsa_key_pair(), "beta": rsa_key_pair()}


def accepted_keys(top):
    """A master pki_dir under ``top`` that has accepted alpha's and beta's keys; its path as a str."""
    pki = top / "pki"
    (pki / "minions").mkdir(parents=True)
    for name in KEYS:
        (pki / "minions" / name).write_bytes(KEYS[name][1])
    return str(pki)


class FakeLocalClient:
    """Records what the runner publishes; answers iemkey.status with ``statuses``."""

    def __init__(self):
        self.published, self.statuses = [], {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def cmd_async(self, tgt, fun, arg=(), tgt_type="glob", kwarg=None, **_kwargs):
        self.published.append({"tgt": tgt, "fun": fun, "arg": list(arg), "tgt_type": tgt_type, "kwarg": kwarg})
        return f"2026112712000000000{len(self.published)}"

    def cmd(self, tgt, fun, tgt_type="glob", **_kwargs):
        assert fun == "iemkey.status" and tgt_type == "list"
        return {m: self.statuses[m] for m in tgt if m in self.statuses}


def master_opts(top, accepted, **extra):
    """A master's opts as it reads them from its config file, with its pki, cache and sock dirs under
    ``top``, the ``accepted`` minion keys, a 0.5 s ``timeout`` and ``extra`` settings."""
    import salt.config  # pylint: disable=import-outside-toplevel
    import yaml  # pylint: disable=import-outside-toplevel

    pki = top / "pki"
    (pki / "minions").mkdir(parents=True)
    for name in accepted:
        (pki / "minions" / name).write_text("key")
    conf = top / "master"
    dirs = {"root_dir": str(top), "pki_dir": str(pki), "cachedir": str(top / "cache"), "sock_dir": str(top / "sock")}
    conf.write_text(yaml.safe_dump({**dirs, "timeout": 0.5, **extra}))
    return salt.config.master_config(str(conf))
