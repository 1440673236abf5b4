"""A short real vegeta attack through `gateway perf run`, and the verdict reading vegeta's own results.

vegeta is the one on PATH, else the one `make perf` builds into the venv, else (where Go exists) built here
the same way: `go install github.com/tsenart/vegeta/v12@v12.13.0`, never a downloaded binary. Only on a
machine with neither does the run fall back to the built-in attacker, and the test says so in a warning."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from perf.results import read_results

ROOT = Path(__file__).resolve().parents[2]
VEGETA_MODULE = "github.com/tsenart/vegeta/v12@v12.13.0"
SCENARIO = """
defaults: {policy: policies.yaml, redis: false}
scenarios:
  tiny:
    duration: 2s
    attacks:
      - {name: horoscopes, targets: perf/targets/horoscopes.http, rate: 20}
      - {name: payments, targets: perf/targets/payments.http, rate: 5}
"""


def vegeta_binary() -> str | None:
    """vegeta on PATH or in the venv (where `make perf` builds it); built there with Go when missing."""
    venv_bin = Path(sys.executable).parent
    found = shutil.which("vegeta") or shutil.which("vegeta", path=str(venv_bin))
    if found is not None:
        return found
    go = shutil.which("go")
    if go is None:
        return None
    # GOPATH and GOCACHE beside the venv: CI may run without a HOME for Go to put them in.
    cache = venv_bin.parent / "go"
    env = {**os.environ, "GOBIN": str(venv_bin), "GOPATH": str(cache), "GOCACHE": str(cache / "build-cache")}
    subprocess.run([go, "install", VEGETA_MODULE], check=True, timeout=1200, env=env)
    return shutil.which("vegeta", path=str(venv_bin))


@pytest.mark.filterwarnings("default::UserWarning")  # without Go, say so in the summary, do not fail
def test_a_real_vegeta_attack_through_gateway_perf_run_is_judged_from_its_results(tmp_path: Path) -> None:
    vegeta = vegeta_binary()
    if vegeta is None:
        warnings.warn(
            "the vegeta path was NOT exercised: neither vegeta nor go is on this machine; the run below uses"
            " the built-in attacker",
            stacklevel=1,
        )
    scenarios = tmp_path / "scenarios.yaml"
    scenarios.write_text(SCENARIO)
    out = tmp_path / "run"
    path = os.pathsep.join(p for p in (str(Path(vegeta).parent) if vegeta else "", os.environ["PATH"]) if p)
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "perf", "run", "tiny", "--scenarios", str(scenarios),
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=180, env={**os.environ, "PATH": path},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    meta = json.loads((out / "results.meta.json").read_text())
    assert meta["generator"] == ("vegeta" if vegeta else "builtin")
    if vegeta:
        assert f"vegeta ({vegeta})" in done.stderr
    results = list(read_results(out / "results.json"))
    by_attack = {name: [r for r in results if r.attack == name] for name in ("horoscopes", "payments")}
    assert 30 <= len(by_attack["horoscopes"]) <= 50 and 5 <= len(by_attack["payments"]) <= 15
    assert all(r.code == 200 for r in by_attack["horoscopes"])
    summary = (out / "summary.txt").read_text()
    assert summary.startswith("verdict: PASS")
    assert f"{len(results)} results, generator {meta['generator']}" in summary
    rows = [line.split()[:2] for line in summary.splitlines()]
    assert ["horoscopes", str(len(by_attack["horoscopes"]))] in rows  # the attack row counts vegeta's lines
