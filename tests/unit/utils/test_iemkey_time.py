"""Times (_utils/iemkey_time.py): ISO 8601 with any offset, naive means UTC, epoch seconds; anything else is refused."""

import datetime

import iemkey_time
import pytest
from salt.exceptions import SaltInvocationError

UTC = datetime.timezone.utc
T = datetime.datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "value",
    [
        "2026-11-20T08:00:00Z",
        "2026-11-20T08:00:00z",
        "2026-11-20T08:00:00+00:00",
        "2026-11-20T09:00:00+01:00",
        "2026-11-20T03:00:00-05:00",
        "2026-11-20T08:00:00",  # naive: UTC
        "2026-11-20 08:00:00+00:00",  # what a YAML datetime renders as in Jinja
        " 2026-11-20T08:00:00Z ",
        1795161600,
        1795161600.0,
        "1795161600",
        datetime.datetime(2026, 11, 20, 8, 0),  # PyYAML's naive datetime from unquoted pillar
        datetime.datetime(2026, 11, 20, 3, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=-5))),
    ],
)
def test_accepted_forms_mean_the_same_instant(value):
    parsed = iemkey_time.parse_time(value)
    assert parsed == T
    assert parsed.tzinfo == UTC


def test_a_date_means_midnight_utc():
    assert iemkey_time.parse_time(datetime.date(2026, 11, 20)) == T.replace(hour=0)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "yesterday",
        "2026-13-01T00:00:00Z",
        "2026-11-20T25:00",
        "next tuesday 08:00",
        "-5",
        "1e9",
        None,
        True,
        ["2026-11-20"],
        {"t": 1},
        "99999999999999999999",
    ],
)
def test_malformed_times_are_refused_with_the_value_named(value):
    with pytest.raises(SaltInvocationError) as err:
        iemkey_time.parse_time(value)
    assert "since" in str(err.value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("yesterday", "since 'yesterday' is not an ISO 8601 time (2026-11-20T08:00:00Z) or epoch seconds"),
        (None, "since must be an ISO 8601 time or epoch seconds, not None"),
        (True, "since must be an ISO 8601 time or epoch seconds, not True"),
        (["2026-11-20"], "since must be an ISO 8601 time or epoch seconds, not ['2026-11-20']"),
        ("99999999999999999999", "since '99999999999999999999' is not a usable epoch time"),
    ],
)
def test_each_refusal_says_exactly_what_was_wrong(value, message):
    with pytest.raises(SaltInvocationError) as err:
        iemkey_time.parse_time(value)
    assert str(err.value) == message


def test_the_value_is_named_as_the_caller_names_it():
    with pytest.raises(SaltInvocationError) as err:
        iemkey_time.parse_time("soon", "rotated_at")
    assert str(err.value).startswith("rotated_at 'soon' is not")


def test_iso_output_is_utc_with_an_explicit_offset():
    assert iemkey_time.iso(T.timestamp()) == "2026-11-20T08:00:00+00:00"
    assert iemkey_time.iso(None) is None
