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


HOW = "write ISO 8601 (2026-11-20T08:00:00Z) or epoch seconds as @1763625600"
NOT_EPOCH = "is a number, but not 10 digits of epoch seconds: read as epoch seconds it would not be the time you meant"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("yesterday", f"since 'yesterday' is not a time; {HOW}"),
        (None, f"since must be a time, not None; {HOW}"),
        (True, f"since must be a time, not True; {HOW}"),
        (["2026-11-20"], f"since must be a time, not ['2026-11-20']; {HOW}"),
        ("99999999999999999999", f"since '99999999999999999999' {NOT_EPOCH}; {HOW}"),
        # issue 28: a compact date is not Unix time 1970-08-23, and says what was probably meant
        ("20261120", f"since '20261120' {NOT_EPOCH} (did you mean 2026-11-20?); {HOW}"),
        (20261120, f"since 20261120 {NOT_EPOCH} (did you mean 2026-11-20?); {HOW}"),
        ("0", f"since '0' {NOT_EPOCH}; {HOW}"),
        (0, f"since 0 {NOT_EPOCH}; {HOW}"),
        ("-1763625600", f"since '-1763625600' {NOT_EPOCH}; {HOW}"),
        (-5, f"since -5 {NOT_EPOCH}; {HOW}"),
        (
            "@0000000000",
            f"since '@0000000000' was read as 1970-01-01T00:00:00+00:00, before 2001: not a time a "
            f"BigFix key rotation can mean; {HOW}",
        ),
        (
            "1999-12-31T23:59:59Z",
            f"since '1999-12-31T23:59:59Z' was read as 1999-12-31T23:59:59+00:00, before "
            f"2001: not a time a BigFix key rotation can mean; {HOW}",
        ),
    ],
)
def test_each_refusal_says_exactly_what_was_wrong(value, message):
    with pytest.raises(SaltInvocationError) as err:
        iemkey_time.parse_time(value)
    assert str(err.value) == message


@pytest.mark.parametrize(
    "value", ["@1795161600", " @1795161600 ", "@1795161600.0", 1795161600, "1795161600", "2026-11-20T08:00:00Z"]
)
def test_epoch_seconds_are_taken_written_with_an_at_sign_or_as_ten_digits(value):
    assert iemkey_time.parse_time(value) == T


def test_the_first_instant_of_2001_is_the_earliest_time_taken():
    assert iemkey_time.parse_time("2001-01-01T00:00:00Z") == iemkey_time.EARLIEST
    with pytest.raises(SaltInvocationError):
        iemkey_time.parse_time("2000-12-31T23:59:59.999999Z")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        (1, True),
        (0, False),
        ("True", True),
        ("false", False),
        ("YES", True),
        ("no", False),
        (" on ", True),
        ("off", False),
        ("1", True),
        ("0", False),
    ],
)
def test_booleans_are_booleans(value, expected):
    assert iemkey_time.boolean("force", value) is expected


@pytest.mark.parametrize("value", ["yes-please", "2", 2, None, "", [], "truee", 1.5])
def test_anything_else_is_not_a_boolean_and_the_argument_is_named(value):
    with pytest.raises(SaltInvocationError) as err:
        iemkey_time.boolean("force", value)
    assert str(err.value) == f"force must be True or False, not {value!r}"


def test_the_value_is_named_as_the_caller_names_it():
    with pytest.raises(SaltInvocationError) as err:
        iemkey_time.parse_time("soon", "rotated_at")
    assert str(err.value).startswith("rotated_at 'soon' is not")


def test_iso_output_is_utc_with_an_explicit_offset():
    assert iemkey_time.iso(T.timestamp()) == "2026-11-20T08:00:00+00:00"
    assert iemkey_time.iso(None) is None
