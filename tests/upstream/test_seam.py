"""The upstream package as a seam: one idempotency rule, no import of the policy engine, and the https://
path (aiohttp's ClientSession) answering with the same reply as the lean pool, against a real TLS server."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from gateway import retry
from gateway.upstream import methods, pool

ROOT = Path(__file__).resolve().parents[2]


def test_one_idempotency_rule_for_the_pool_resend_and_the_retries() -> None:
    assert retry.IDEMPOTENT_METHODS is methods.IDEMPOTENT_METHODS
    assert pool.IDEMPOTENT_METHODS is methods.IDEMPOTENT_METHODS
    # RFC 9110 9.2.2
    assert methods.IDEMPOTENT_METHODS == {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"}


def test_the_upstream_package_imports_nothing_of_the_policy_engine() -> None:
    code = textwrap.dedent(
        """
        import sys
        import gateway.upstream.client, gateway.upstream.errors, gateway.upstream.https
        import gateway.upstream.methods, gateway.upstream.pool, gateway.upstream.reply
        print(" ".join(sorted(m for m in sys.modules if m.startswith("gateway"))))
        """
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    loaded = set(run.stdout.split())
    assert loaded and all(m == "gateway" or m.startswith("gateway.upstream") for m in loaded), loaded


def make_certificate(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", str(key),
         "-out", str(cert), "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return cert, key


# Run in a child: aiohttp builds its verifying SSL context once, at import, from the default trust store,
# which SSL_CERT_FILE points at the test's own certificate (no test-only trust hook in the gateway).
HTTPS_EXCHANGE = """
import asyncio, ssl, sys
import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from gateway.upstream.client import UpstreamClient, open_upstream
from gateway.upstream.errors import UpstreamError

async def main(cert, key):
    async def handler(request):
        return web.Response(text=f"{request.method} {request.path_qs} {request.host}")
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    client = UpstreamClient.create("s", f"https://localhost:{port}/base", max_connections=4)
    deadline = aiohttp.ClientTimeout(total=5, sock_connect=2)
    try:
        reply = await open_upstream(client, "GET", client.base + "/x?y=1", CIMultiDict({"Host": client.host}),
                                    None, deadline=deadline)
    except UpstreamError as exc:
        print("refused", exc.kind, client.connections_in_use)
        await client.close()
        await runner.cleanup()
        return
    print("in_use_while_open", client.connections_in_use)
    print("whole", reply.whole_body())
    body = b"".join([chunk async for chunk in reply.iter_any()])
    print("reply", reply.status, reply.reason, reply.content_length == len(body), body.decode())
    reply.release()
    reply.release()
    print("in_use_after", client.connections_in_use)
    await client.close()
    print("closed", client.closed)
    await runner.cleanup()
    gone = UpstreamClient.create("s", f"https://localhost:{port}", max_connections=4)
    try:
        await open_upstream(gone, "GET", gone.base + "/", CIMultiDict({"Host": gone.host}), None,
                            deadline=deadline)
    except UpstreamError as exc:
        print("down", exc.kind, gone.connections_in_use)
    await gone.close()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def test_an_https_upstream_answers_through_the_same_reply_and_counts_its_connections(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    run = subprocess.run(
        [sys.executable, "-c", HTTPS_EXCHANGE, str(cert), str(key)],
        capture_output=True, text=True, cwd=ROOT, timeout=60, env={"SSL_CERT_FILE": str(cert)},
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "in_use_while_open 1"
    assert lines[1] == "whole None"  # aiohttp's body is always streamed
    assert lines[2].startswith("reply 200 OK True GET /base/x?y=1 localhost:"), lines[2]  # base path kept
    assert lines[3] == "in_use_after 0"  # released once, whatever the number of calls
    assert lines[4] == "closed True"
    assert lines[5] == "down connect_error 0"


def test_an_https_upstream_with_a_certificate_nobody_trusts_is_a_connect_error(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    run = subprocess.run(
        [sys.executable, "-c", HTTPS_EXCHANGE, str(cert), str(key)],
        capture_output=True, text=True, cwd=ROOT, timeout=60, env={},
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["refused connect_error 0"]  # a 502 to the client, its slot given back
