"""
How a minion's signed iemkey events reach its masters.

Under ``salt-call`` (a detector's hook: any process but the minion daemon), an event goes to every
master at once (``master_uri_list``; under ``salt-call --local``, the ``master`` setting), each send in
a process of its own that is killed at ``timeout`` seconds: a master that is down costs that long, not
Salt's 60 s x 3 tries for each master in turn. In a job the minion daemon runs, it goes through the
daemon (``event.send``), which forwards it to every master it is connected to.

Given the minion's opts and its ``event.send``; no Salt loader dunders.
"""

import logging
import time

log = logging.getLogger(__name__)


def configured_masters(opts):
    """The request URIs of the masters in the minion's ``master`` setting (``host`` or ``host:port``;
    ``master_port`` by default), for ``salt-call --local``."""
    import salt.utils.network  # pylint: disable=import-outside-toplevel

    masters = opts.get("master") or []
    uris = []
    for entry in [masters] if isinstance(masters, str) else masters:
        host, port = salt.utils.network.parse_host_port(str(entry))
        uris.append(f"tcp://{salt.utils.network.ip_bracket(host)}:{port or opts.get('master_port', 4506)}")
    return uris


def send(opts, tag, data, timeout, event_send):
    """Send ``tag`` with ``data`` to the masters: {master: True, or why it did not take it}.
    ``timeout()``: the seconds each master is given (asked only when the minion sends itself)."""
    uris = opts.get("master_uri_list") or ([opts["master_uri"]] if opts.get("master_uri") else [])
    if opts.get("file_client") == "local":  # salt-call --local: it connected to no master at its start
        uris = configured_masters(opts)
    elif "minion" in str(opts.get("__cli") or "") or not uris:  # salt-minion (a job), not salt-call
        try:
            took = bool(event_send(tag, data))
        except Exception as exc:  # pylint: disable=broad-except
            took = f"event.send failed: {exc}"
        return {"minion daemon": took or "event.send returned False"}
    timeout = timeout()
    load = {"id": opts["id"], "tag": tag, "data": data, "cmd": "_minion_event"}
    answers = {uri: f"no answer within {timeout:g} s" for uri in uris}
    answers.update(send_each(opts, uris, load, timeout))
    for uri, took in answers.items():
        log.log(logging.INFO if took is True else logging.WARNING, "iemkey: %s to master %s: %s", tag, uri, took)
    return answers


def send_one(opts, uri, load, timeout):
    """True once ``uri``'s master took ``load``; else why not."""
    import salt.channel.client  # pylint: disable=import-outside-toplevel

    opts = dict(opts, master_uri=uri)  # each its own: the channel factory writes master_uri
    try:
        with salt.channel.client.ReqChannel.factory(opts, master_uri=uri) as channel:
            channel.send(load, tries=1, timeout=timeout)
        return True
    except Exception as exc:  # pylint: disable=broad-except
        return f"not sent: {type(exc).__name__}: {exc}"


def send_each(opts, uris, load, timeout):
    """{uri: answer} of the masters that answered within ``timeout``: each send in a process of its own
    (forked: one master's channel and authentication share nothing with another's, and one that hangs
    on a dead master is killed at the deadline instead of holding salt-call's exit); threads where
    there is no fork (Windows)."""
    import multiprocessing  # pylint: disable=import-outside-toplevel

    deadline = time.monotonic() + timeout
    if "fork" not in multiprocessing.get_all_start_methods():
        import concurrent.futures  # pylint: disable=import-outside-toplevel

        pool = concurrent.futures.ThreadPoolExecutor(len(uris))
        futures = {uri: pool.submit(send_one, opts, uri, load, timeout) for uri in uris}
        concurrent.futures.wait(futures.values(), timeout=timeout)
        pool.shutdown(wait=False)
        return {uri: f.result() for uri, f in futures.items() if f.done()}
    context = multiprocessing.get_context("fork")
    running = {}
    for uri in uris:
        reader, writer = context.Pipe(duplex=False)
        child = context.Process(target=lambda w=writer, u=uri: w.send(send_one(opts, u, load, timeout)), daemon=True)
        child.start()
        writer.close()
        running[uri] = (child, reader)
    answers = {}
    for uri, (child, reader) in running.items():
        try:
            if reader.poll(max(0.0, deadline - time.monotonic())):
                answers[uri] = reader.recv()
        except (EOFError, OSError):
            answers[uri] = "not sent: the sending process died"
        if child.is_alive():
            child.kill()
        child.join(5)
        reader.close()
    return answers
