"""
The commands `make sandbox` puts in its ``bin/``, besides Salt's own (each a wrapper that calls this):

- ``bigfix-console list | revoke <computer id>... | revoke-group <group name> | delete <computer id>...``:
  what an operator does by hand in the BigFix console, done on the sandbox's stand-in server;
- ``siem-webhook <minion id> [reason]``: a SIEM's signed webhook through the sandbox's salt-api.
"""

import hashlib
import hmac
import json
import pathlib
import sys
import time

import requests

CONSOLE_USAGE = (
    "usage: bigfix-console list | revoke <computer id>... | revoke-group <group name> | delete <computer id>..."
)


def _ask(method, url, **kwargs):
    """The JSON answer, or exit non-zero with the error the server gave."""
    response = requests.request(method, url, timeout=30, **kwargs)
    if response.status_code >= 400:
        try:
            sys.exit(response.json().get("error") or response.text)
        except ValueError:
            sys.exit(f"{response.status_code} {response.text}")
    return response.json()


def console(url, args):
    if not args or args[0] not in ("list", "revoke", "revoke-group", "delete") or (args[0] != "list" and len(args) < 2):
        sys.exit(CONSOLE_USAGE)
    if args[0] == "list":
        answer = _ask("GET", url)
    elif args[0] == "revoke-group":
        answer = _ask("POST", url, json={"action": "revoke", "group": args[1]})
    else:
        answer = _ask("POST", url, json={"action": args[0], "computers": args[1:]})
    print(json.dumps(answer, indent=2, sort_keys=True))


def webhook(api, user, secret_file, args):
    if not args:
        sys.exit("usage: siem-webhook <minion id> [reason]")
    secret = pathlib.Path(secret_file).read_text(encoding="utf-8").split(":", 1)[1].strip()
    answer = _ask("POST", f"{api}/login", json={"username": user, "password": "x", "eauth": "auto"})
    body = json.dumps({"minion_id": args[0], "reason": " ".join(args[1:]) or "SIEM rule 4711"}).encode()
    stamp = str(int(time.time()))
    digest = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": "application/json",
        "X-Auth-Token": answer["return"][0]["token"],
        "X-Iemkey-Signature": f"t={stamp},sha256={digest}",
    }
    print(json.dumps(_ask("POST", f"{api}/hook/iemkey/compromised", data=body, headers=headers)))


def main(argv):
    if argv[:1] == ["console"] and len(argv) >= 2:
        return console(argv[1], argv[2:])
    if argv[:1] == ["webhook"] and len(argv) >= 4:
        return webhook(argv[1], argv[2], argv[3], argv[4:])
    sys.exit("usage: sandbox_tools.py console <url> ... | webhook <api> <user> <secret file> ...")


if __name__ == "__main__":
    main(sys.argv[1:])
