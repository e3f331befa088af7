"""salt-api (rest_cherrypy) as the integration tests drive it."""

import time

import requests
from helpers import API_USER


class SaltApi(str):
    """salt-api's base URL; ``.daemon`` is its salt-factories daemon (to restart it)."""

    daemon = None


def login(salt_api):
    """A salt-api token for the SIEM user (salt-api keeps its sessions in memory: log in after a restart)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            response = requests.post(
                f"{salt_api}/login", json={"username": API_USER, "password": "x", "eauth": "auto"}, timeout=10
            )
            if response.status_code == 200:
                return response.json()["return"][0]["token"]
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, "salt-api did not log the SIEM user in within 60 s"
        time.sleep(0.5)
