"""``rediss://``: TLS to Redis, including a self-signed certificate as Heroku Redis uses."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.clients import make_token, recv
from tests.conftest import make_settings
from tests.redis_server import find_redis_server, free_port


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "redis-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "redis.crt", directory / "redis.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@pytest.fixture
def tls_redis_url(tmp_path: Path) -> Iterator[str]:
    executable = find_redis_server()
    cert, key = self_signed(tmp_path)
    port = free_port()
    process = subprocess.Popen(
        [
            executable,
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(key),
            "--tls-ca-cert-file",
            str(cert),
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    time.sleep(0.3)
    if process.poll() is not None:
        output = process.stdout.read().decode() if process.stdout else ""
        pytest.skip(f"this redis-server has no TLS support: {output[-200:]}")
    yield f"rediss://127.0.0.1:{port}/0"
    process.kill()
    process.wait()


async def _ready(live, attempts: int = 100) -> int:
    for _ in range(attempts):
        async with live.session.get(f"{live.base}/readyz") as resp:
            if resp.status == 200:
                return 200
        await asyncio.sleep(0.05)
    return 503


async def test_rediss_with_self_signed_certificate_when_verification_is_off(
    start_server, tls_redis_url
) -> None:
    live = await start_server(make_settings(redis={"url": tls_redis_url, "tls_verify": False}))
    assert await _ready(live) == 200
    ws, _ = await live.ws_ready(token=make_token("u1"))
    status, body = await live.post({"type": "store_updated", "data": {"storeId": "s1", "store": {}}})
    assert status == 202
    assert (await recv(ws))["id"] == body["ids"][0]


async def test_rediss_refuses_an_untrusted_certificate_by_default(start_server, tls_redis_url) -> None:
    live = await start_server(make_settings(redis={"url": tls_redis_url}))
    assert await _ready(live, attempts=20) == 503
    status, body = await live.post({"type": "store_updated", "data": {"storeId": "s1", "store": {}}})
    assert status == 503 and body["error"] == "unavailable"
