"""
The one base of every exception iemkey raises on purpose (``IemkeyError``): a refused event
(``iemkey_auth.Refused``), a store that cannot be used (``iemkey_banks.StoreError``), the BigFix REST
API (``iemkey_bigfix.ApiError``, ``ConfigError``), a malformed master setting
(``iemkey_config.Misconfigured``), a job that could not be published (``iemkey_delivery.PublishError``),
an operator's act refused (``iemkey_incidents.Refused``). Each message says what failed and why, and
whether anything changed; ``except iemkey_errors.IemkeyError`` catches them all and nothing else.
Imports nothing of iemkey's.
"""


class IemkeyError(Exception):
    """An error iemkey raises on purpose, with a message an operator can act on."""
