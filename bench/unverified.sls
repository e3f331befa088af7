#!py
"""Benchmark baseline only, never mapped by users: the pre-signature reactor, which trusted data['id']."""


def run():
    return {"bench-unverified-rotate": {"local.state.single": [
        {"tgt": [data["id"]]}, {"tgt_type": "list"},
        {"args": [{"fun": "iemkey.rotated"}, {"name": "bigfix-agent-key"}, {"since": data["_stamp"]},
                  {"queue": True}]},
    ]}}
