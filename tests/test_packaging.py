"""The image runs what the tests run: the same console script, the same policy check, the health path."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

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
