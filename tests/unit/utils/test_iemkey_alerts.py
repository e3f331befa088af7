"""
Which kept alerts a minion's rotation record settles (``iemkey_alerts.rotated_after``): the rotation
it records and, while a new rotation runs, the last completed one it carries.
"""

import iemkey_alerts
import pytest

ALERT = {"raised_at": "2026-12-07T10:00:00+00:00"}


@pytest.mark.parametrize(
    "record, after",
    [
        (None, False),
        ({}, False),
        ({"step": "done", "rotated_at": "2026-12-07T10:00:00+00:00"}, True),  # at the alert counts
        ({"step": "done", "rotated_at": "2026-12-07T09:59:59+00:00"}, False),
        ({"step": "done", "deleted_at": "2026-12-07T11:00:00+00:00"}, False),  # done reads rotated_at
        ({"step": "deleted", "deleted_at": "2026-12-07T11:00:00+00:00"}, True),
        ({"step": "deleted", "rotated_at": "2026-12-07T11:00:00+00:00"}, False),  # deleted reads deleted_at
        # a new rotation runs: the last completed one it carries still settles the alert
        ({"step": "stopping", "previous_rotated_at": "2026-12-07T10:30:00+00:00"}, True),
        ({"step": "failed", "previous_rotated_at": "2026-12-07T10:30:00+00:00"}, True),
        ({"step": "stopping", "previous_rotated_at": "2026-12-07T09:00:00+00:00"}, False),
        ({"step": "stopping", "rotated_at": "2026-12-07T11:00:00+00:00"}, False),  # no completed rotation
        ({"step": "done", "rotated_at": "not a time"}, False),
    ],
)
def test_a_rotation_after_the_alert_settles_it(record, after):
    assert iemkey_alerts.rotated_after(ALERT, record) is after
