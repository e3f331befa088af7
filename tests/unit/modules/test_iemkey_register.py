"""Where the key-exchange password may come from: pillar or sdb, never minion config, grains or the CLI."""

from unittest.mock import MagicMock

import pytest
import salt.version
from helpers import load_source
from salt.exceptions import CommandExecutionError

iemkey = load_source("_modules", "iemkey_module_register")


@pytest.fixture
def settings():
    """What config.get sees (minion config, grains, pillar merged) and what pillar alone holds."""
    return {"config": {}, "pillar": {}, "sdb": {}}


@pytest.fixture
def configure_loader_modules(settings):
    def pillar_get(key, default=None, **kwargs):
        return settings["pillar"].get(key, default)

    return {
        iemkey: {
            "__grains__": {"kernel": "Linux"},
            "__context__": {},
            "__opts__": {},
            "__salt__": {
                "config.get": lambda key, default=None: settings["config"].get(key, default),
                "pillar.get": MagicMock(side_effect=pillar_get),
                "sdb.get": lambda uri: settings["sdb"].get(uri, uri),
            },
        }
    }


def test_a_pillar_password_is_used(settings):
    settings["pillar"]["iemkey:register_password"] = settings["config"]["iemkey:register_password"] = "Pw-1"
    assert iemkey._agent().register_password() == "Pw-1"


def test_pillar_is_read_unmasked_where_salt_masks_it():
    iemkey._agent().register_password()
    (call,) = iemkey.__salt__["pillar.get"].call_args_list
    unmask = salt.version.__saltstack_version__.info >= (3008,)
    assert call.kwargs == ({"unmask": True} if unmask else {})  # older lines have no such argument


@pytest.mark.parametrize("where", ["minion config", "grains"])
def test_a_plain_password_outside_pillar_is_refused(settings, where):
    settings["config"]["iemkey:register_password"] = "Pw-in-" + where  # config.get finds it, pillar does not
    with pytest.raises(CommandExecutionError, match=r"set outside pillar .* put it in pillar or behind an sdb://"):
        iemkey._agent().register_password()


@pytest.mark.parametrize("source", ["config", "pillar"])
def test_an_sdb_uri_is_resolved_wherever_it_is(settings, source):
    settings[source]["iemkey:register_password"] = "sdb://vault/bigfix/register"
    settings["sdb"]["sdb://vault/bigfix/register"] = "Pw-from-vault"
    assert iemkey._agent().register_password() == "Pw-from-vault"


def test_an_sdb_uri_that_does_not_resolve_is_an_error_never_the_password(settings):
    settings["pillar"]["iemkey:register_password"] = "sdb://vault/missing"
    with pytest.raises(CommandExecutionError, match="the sdb:// URI did not resolve to a password"):
        iemkey._agent().register_password()


@pytest.mark.parametrize("bad", ["pässword", "tab\tinside"])
def test_a_password_a_relay_cannot_take_is_refused(settings, bad):
    settings["pillar"]["iemkey:register_password"] = bad
    with pytest.raises(CommandExecutionError, match="printable ASCII") as err:
        iemkey._agent().register_password()
    assert bad not in str(err.value)


def test_no_password_anywhere_is_none(settings):
    assert iemkey._agent().register_password() is None
