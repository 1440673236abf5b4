"""The image runs what the tests run: the same console script, the same policy check, the health path."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from perf.local import free_port

ROOT = Path(__file__).resolve().parents[1]


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_image_entry_point_is_the_console_script_the_tests_use() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["gateway"] == "gateway.cli:main"
    entry = re.search(r"^ENTRYPOINT (.+)$", dockerfile(), re.M)
    assert entry is not None and json.loads(entry.group(1)) == ["gateway", "serve"]


def test_image_runs_as_non_root_with_a_healthcheck_on_the_ops_health_path() -> None:
    text = dockerfile()
    user = re.findall(r"^USER (\S+)$", text, re.M)
    assert user and user[-1] not in ("root", "0")
    assert "HEALTHCHECK" in text and "/api/ops/health" in text


def test_the_policy_baked_into_the_image_is_valid() -> None:
    assert "COPY policies.yaml /etc/gateway/policies.yaml" in dockerfile()
    run = subprocess.run([sys.executable, "-m", "gateway", "check", str(ROOT / "policies.yaml")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_refuses_to_start_without_the_c_http_parser() -> None:
    env = {"AIOHTTP_NO_EXTENSIONS": "1", "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-m", "gateway", "serve", "--policy", str(ROOT / "policies.yaml"),
                          "--port", "1"], capture_output=True, text=True, env=env, timeout=30)
    assert run.returncode == 2
    assert "C HTTP parser" in run.stderr


def test_gateway_perf_reaches_the_load_tooling_through_its_entry_point() -> None:
    run = subprocess.run([sys.executable, "-m", "gateway", "perf", "run", "-h"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage: gateway perf run")


def test_gateway_perf_without_the_perf_package_says_how_to_install_it() -> None:
    # What the image (built from gateway/ and upstream_app/ only) does: `perf` cannot be imported there.
    code = ("import sys\nsys.modules['perf'] = None\n"
            "from gateway.cli import main\nsys.exit(main(sys.argv[1:]))")
    run = subprocess.run([sys.executable, "-c", code, "perf", "run", "steady"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert run.returncode == 2
    assert "the load tooling (the `perf` package) is not installed" in run.stderr
    assert "pip install -e '.[perf]'" in run.stderr
    assert "Traceback" not in run.stderr


def test_the_image_builds_the_runtime_only() -> None:
    copies = re.findall(r"^COPY (?!--from)(.+)$", dockerfile(), re.M)
    assert copies and not any("perf" in line for line in copies)


def test_the_console_and_the_openapi_document_ship_as_package_data() -> None:
    from fnmatch import fnmatch

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    globs = setuptools["package-data"]["gateway"]
    shipped = [p.relative_to(ROOT / "gateway").as_posix() for p in (ROOT / "gateway" / "ops").rglob("*")
               if p.is_file() and p.suffix in (".html", ".js", ".css", ".yaml")]
    assert {"ops/openapi.yaml", "ops/static/console/app.js"} <= set(shipped)
    for name in shipped:
        assert any(fnmatch(name, glob) for glob in globs), f"{name} is not in the package data"


def test_the_image_default_audit_directory_is_writable_by_its_non_root_user() -> None:
    """The image's layout, for real: the policy in a directory the gateway cannot write (/etc/gateway, root's
    in the image; here made immutable, which binds root too, or read-only when the tests do not run as
    root), the data dir the Dockerfile creates and gives its user. The default audit directory (data/audit,
    relative) must land in the data dir and be written: an admin action is exported, health is ok."""
    text = dockerfile()
    data_dir = re.search(r"^ENV .*\bGATEWAY_DATA_DIR=(\S+)", text, re.M)
    assert data_dir is not None, "the image must say where its writable data lives"
    uid = re.findall(r"^USER (\S+)$", text, re.M)[-1]
    assert re.search(rf"mkdir -p {data_dir.group(1)}\b", text)
    assert re.search(rf"chown -R {uid} {data_dir.group(1)}\b", text)

    image = Path(tempfile.mkdtemp(prefix="gw-image-"))
    etc = image / "etc/gateway"
    etc.mkdir(parents=True)
    shutil.copy(ROOT / "policies.yaml", etc / "policies.yaml")  # COPY policies.yaml /etc/gateway/
    data = image / data_dir.group(1).lstrip("/")
    data.mkdir(parents=True)
    root = os.geteuid() == 0
    try:
        if root:
            subprocess.run(["chattr", "+i", str(etc)], check=True)
        else:
            etc.chmod(0o555)
        with pytest.raises(OSError):
            (etc / "data").mkdir()  # truly not writable
        served = asyncio.run(_serve_and_export(etc / "policies.yaml", data))
    finally:
        if root:
            subprocess.run(["chattr", "-i", str(etc)], check=True)
        etc.chmod(0o755)
        shutil.rmtree(image)
    assert served["health"] == "ok", served
    assert served["exported"] == 200 and "breaker.open" in served["actions"], served
    assert served["files"], "nothing was written under the data dir"


async def _serve_and_export(policy: Path, data: Path) -> dict[str, Any]:
    token = "image-test-token-0123456789"
    port = free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT),
           "GATEWAY_ADMIN_TOKENS": token, "GATEWAY_DATA_DIR": str(data)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--policy", str(policy), "--port", str(port), "--no-watch",
        cwd=data, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    bearer = {"Authorization": f"Bearer {token}"}
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:
            for _ in range(300):
                try:
                    async with session.get("/api/ops/health"):
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            async with session.post("/api/ops/breakers/app", json={"action": "open"}, headers=bearer) as resp:
                assert resp.status == 200
            export = {"entities": ["audit"], "range": {"from": "2020-01-01T00:00:00Z"}}
            async with session.post("/api/ops/export", json=export, headers=bearer) as resp:
                status = resp.status
                body = await resp.json()
            async with session.post("/api/ops/breakers/app", json={"action": "close"}, headers=bearer):
                pass
            async with session.get("/api/ops/health") as resp:
                health = (await resp.json())["status"]
    finally:
        proc.terminate()
        await proc.wait()
    audit = data / "data/audit"
    return {"health": health, "exported": status, "actions": [r.get("action") for r in body.get("audit", [])],
            "files": sorted(p.name for p in audit.glob("*.jsonl")) if audit.exists() else []}
