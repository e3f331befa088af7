"""
Grain ``iemkey:installed``: whether this minion has a BigFix agent, for targeting BigFix hosts the Salt
way (``salt -G 'iemkey:installed:True' iemkey.rotate``).

Read from the minion's own config (``iemkey:storage_path``, ``iemkey:config_file``; grains are computed
before pillar, so settings that live only in pillar are not seen here) and the agent's settings, as
``iemkey.status`` reads them. Computed when the minion starts and at ``saltutil.refresh_grains``;
``iemkey.status`` answers for now. Never fails: a minion on which it cannot tell says ``None``.
"""

import logging
import ntpath
import platform
import posixpath

try:  # _utils/, synced with saltutil.sync_all (formula install)
    import iemkey_platforms
    import iemkey_storage
except ImportError:
    try:  # pip install (Salt extension)
        from saltext.iemkey.utils import iemkey_platforms, iemkey_storage
    except ImportError:
        iemkey_platforms = None

log = logging.getLogger(__name__)


def _read_registry(key, name):
    import salt.utils.win_reg  # pylint: disable=import-outside-toplevel

    return salt.utils.win_reg.read_value("HKLM", key, name)


def iemkey():
    """{"iemkey": {"installed": True, False, or None when it cannot tell}}."""
    if iemkey_platforms is None:
        return {}
    grains = {"kernel": platform.system(), "cpuarch": platform.machine()}
    name = iemkey_platforms.platform_name(grains)
    if name is None:
        return {"iemkey": {"installed": False}}
    conf = __opts__.get("iemkey") if isinstance(__opts__.get("iemkey"), dict) else {}
    chosen = iemkey_platforms.PLATFORMS[name]
    try:
        config_file = conf.get("config_file") or iemkey_platforms.UNIX_CONFIG_FILE
        settings = iemkey_platforms.client_settings(chosen, config_file, _read_registry)
        storage, source = iemkey_platforms.resolve_storage(chosen, settings, conf.get("storage_path"))
        pathmod = ntpath if name.startswith("windows") else posixpath
        keystorage = pathmod.join(pathmod.normpath(storage), iemkey_storage.KEYSTORAGE) if storage else None
        found, _why = iemkey_platforms.installed(
            storage, source, settings.get("ComputerID", (None, None))[0], keystorage
        )
    except Exception as exc:  # pylint: disable=broad-except
        log.debug("iemkey grain: cannot tell whether a BigFix agent is here: %s", exc)
        return {"iemkey": {"installed": None}}
    return {"iemkey": {"installed": found}}
