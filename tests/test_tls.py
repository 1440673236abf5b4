"""The TLS listener of a real `gateway serve`: certificates made here with openssl, a client that verifies
them, the files replaced under the running process, TLS 1.1 refused, and clear errors for a bad pair at
start."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import subprocess
import sys
import warnings
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.support.process import ROOT, start_gateway

POLICY = """
version: 1
server: {{tls: {{cert_file: cert.pem, key_file: key.pem}}, plain_port: {plain}}}
upstreams: {{app: {{url: "{url}"}}}}
routes: [{{name: d, match: "* /{{p:.*}}", upstream: app}}]
"""


def make_cert(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA): (cert, key)."""
    cert, key = directory / f"{name}.cert.pem", directory / f"{name}.key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


def trusting(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


def install(directory: Path, cert: Path, key: Path) -> None:
    """Replace the served pair as a deploy tool would: new files renamed over the old ones, key first."""
    for source, target in ((key, "key.pem"), (cert, "cert.pem")):
        shutil.copy(source, directory / f".{target}.tmp")
        os.replace(directory / f".{target}.tmp", directory / target)


async def get(port: int, context: ssl.SSLContext | None, path: str = "/echo") -> tuple[int, dict[str, str]]:
    scheme = "https" if context is not None else "http"
    connector = aiohttp.TCPConnector(ssl=context if context is not None else False)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(f"{scheme}://127.0.0.1:{port}{path}") as response:
            body = await response.read()
            headers = dict(json.loads(body)["headers"]) if response.status == 200 else {}
            return response.status, headers


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    made = tmp_path / "made"
    made.mkdir()
    return {name: make_cert(made, name) for name in ("first", "second")}


async def test_tls_listener_serves_reloads_its_certificate_and_refuses_tls_1_1(
    tmp_path: Path, certs: dict[str, tuple[Path, Path]], upstream: TestServer
) -> None:
    from perf.local import free_port

    install(tmp_path, *certs["first"])
    plain = free_port()
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(url=str(upstream.make_url("")).rstrip("/"), plain=plain))
    proc, port = await start_gateway(policy)
    try:
        status, seen = await get(port, trusting(certs["first"][0]))
        assert status == 200 and seen["X-Forwarded-Proto"] == "https"
        # The plain listener beside it, for a local ingress that terminates TLS itself.
        status, seen = await get(plain, None)
        assert status == 200 and seen["X-Forwarded-Proto"] == "http"

        # A connection opened on the first certificate stays usable across the change.
        kept = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusting(certs["first"][0]), limit=1))
        try:
            async with kept.get(f"https://127.0.0.1:{port}/echo") as response:
                assert response.status == 200
            install(tmp_path, *certs["second"])
            for _ in range(100):  # the next connection gets the new certificate, without a restart
                try:
                    status, _ = await get(port, trusting(certs["second"][0]))
                    break
                except aiohttp.ClientConnectorCertificateError:
                    await asyncio.sleep(0.1)
            else:
                pytest.fail("the new certificate was never served")
            assert status == 200
            async with kept.get(f"https://127.0.0.1:{port}/echo") as response:  # the same connection
                assert response.status == 200
        finally:
            await kept.close()
        assert proc.returncode is None

        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.load_verify_locations(str(certs["second"][0]))
        with warnings.catch_warnings():  # the point is to be the deprecated client
            warnings.simplefilter("ignore", DeprecationWarning)
            old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("DEFAULT:@SECLEVEL=0")
        with pytest.raises((ssl.SSLError, aiohttp.ClientConnectorError)):
            await get(port, old)
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


@pytest.mark.parametrize("fault", ["missing key", "mismatched key"])
def test_a_bad_certificate_pair_is_a_clear_error_at_start(
    tmp_path: Path, certs: dict[str, tuple[Path, Path]], fault: str
) -> None:
    cert, key = certs["first"]
    shutil.copy(cert, tmp_path / "cert.pem")
    if fault == "mismatched key":
        shutil.copy(certs["second"][1], tmp_path / "key.pem")
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(url="http://127.0.0.1:9", plain="null"))
    run = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--policy", str(policy), "--port", "0", "--no-watch"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert run.returncode == 2
    expected = "does not exist" if fault == "missing key" else "the key does not match the certificate"
    assert expected in run.stderr and "server.tls" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr


async def test_a_client_that_never_finishes_its_tls_handshake_is_cut_off_at_the_header_deadline(
    tmp_path: Path, certs: dict[str, tuple[Path, Path]], upstream: TestServer
) -> None:
    """The handshake comes before the first request head: server.header_timeout covers it too (asyncio's own
    default would hold the socket for 60 s, and the connection handler never hears of it)."""
    install(tmp_path, *certs["first"])
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(url=str(upstream.make_url("")).rstrip("/"), plain="null").replace(
        "server: {", "server: {header_timeout: 1s, "))
    proc, port = await start_gateway(policy)
    try:
        silent = await asyncio.open_connection("127.0.0.1", port)  # connects, never says ClientHello
        partial = await asyncio.open_connection("127.0.0.1", port)
        partial[1].write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # the first bytes of one, no more
        started = asyncio.get_running_loop().time()
        for reader, writer in (silent, partial):
            assert await asyncio.wait_for(reader.read(), 15) == b""  # closed by the gateway
            writer.close()
        assert asyncio.get_running_loop().time() - started < 15
        status, _ = await get(port, trusting(certs["first"][0]))  # and the listener still serves
        assert status == 200
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
