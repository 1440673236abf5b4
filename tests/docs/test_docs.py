"""The documentation cannot rot: the policy reference is generated, examples load, links and paths resolve."""

from __future__ import annotations

import glob
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import TypeAdapter, ValidationError

from gateway.policy.loader import load_policy
from gateway.policy.model import Policy
from gateway.policy.reference import render_markdown

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^([ \t]*)```(\w*)[^\n]*\n(.*?)^\1```", re.S | re.M)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
SPAN = re.compile(r"``?([^`\n]+?)``?")
MINIMAL_MARK = "<!-- minimal-policy"


def prose(text: str) -> str:
    """A page without its fenced blocks (links and headings there are not links and headings)."""
    return FENCE.sub("", text)


def yaml_blocks(page: Path) -> list[str]:
    """The ```yaml blocks of a page, unindented (a block inside a list item is indented)."""
    out = []
    for match in FENCE.finditer(page.read_text()):
        if match.group(2) == "yaml":
            indent = len(match.group(1))
            out.append("\n".join(line[indent:] for line in match.group(3).splitlines()))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in prose(page.read_text()).splitlines():
        if m := re.match(r"^#{1,6} (.+)$", line):
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_policy_reference_is_generated_from_the_model() -> None:
    committed = (ROOT / "docs" / "policy-reference.md").read_text()
    assert committed == render_markdown(), (
        "docs/policy-reference.md differs from the policy model: run `make schema` (or `make docs`)"
    )


def test_the_policy_reference_lists_every_key_of_the_model() -> None:
    """A key missing from the generator's walk would be missing from the page."""
    page = render_markdown()

    def keys(model: type[Any], prefix: str) -> list[str]:
        return [f"`{prefix}{name}`" for name in model.model_fields]

    from gateway.policy import model

    expected = [
        *keys(Policy, ""),
        *keys(model.Storage, "storage."),
        *keys(model.Server, "server."),
        *keys(model.Upstream, "upstreams.NAME."),
        *keys(model.Breaker, "breakers.NAME."),
        *keys(model.RateLimit, "rate_limits.NAME."),
        *keys(model.Route, "routes[]."),
        *keys(model.Slo, "routes[].slo."),
        *keys(model.Retries, "routes[].retries."),
    ]
    assert [key for key in expected if key not in page] == []


def test_every_policy_key_has_a_description() -> None:
    """The reference is only as good as the model's descriptions: a new key must say what it does."""
    schema = Policy.model_json_schema(mode="validation")
    models = {"Policy": schema, **schema.get("$defs", {})}
    bare = [
        f"{name}.{key}"
        for name, model in models.items()
        for key, prop in model.get("properties", {}).items()
        if not prop.get("description")
    ]
    assert bare == [], "give these keys Field(description=...) in gateway/policy/model.py; run `make schema`"


def test_readme_minimal_policy_passes_gateway_check(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    assert MINIMAL_MARK in readme, "the README's minimal policy lost its marker"
    block = FENCE.search(readme, readme.index(MINIMAL_MARK))
    assert block is not None and block.group(2) == "yaml"
    path = tmp_path / "my-policy.yaml"
    path.write_text(block.group(3))
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    policy = load_policy(path).policy
    assert {r.name for r in policy.routes} >= {"checkout", "default"}


BLOCKS = [(page, n, text) for page in PAGES for n, text in enumerate(yaml_blocks(page), 1)]
FULL = [(page, text) for page, _, text in BLOCKS if re.search(r"^version:", text, re.M)]
FRAGMENTS = [(page, text) for page, _, text in BLOCKS if not re.search(r"^version:", text, re.M)]
FULL_IDS = [f"{page.name}:yaml{n}" for page, n, text in BLOCKS if re.search(r"^version:", text, re.M)]
FRAGMENT_IDS = [f"{page.name}:yaml{n}" for page, n, text in BLOCKS if not re.search(r"^version:", text, re.M)]


@pytest.mark.parametrize(("page", "text"), FULL, ids=FULL_IDS)
def test_every_whole_policy_in_the_docs_loads(page: Path, text: str, tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    load_policy(path)


@pytest.mark.parametrize(("page", "text"), FRAGMENTS, ids=FRAGMENT_IDS)
def test_every_policy_fragment_in_the_docs_names_real_keys(page: Path, text: str) -> None:
    """Each section of an example validates against the model (references to names it does not declare
    aside): a renamed or misspelt key in the docs fails here."""
    data = yaml.safe_load(re.sub(r"\$\{[^}]*\}", "", text))
    assert isinstance(data, dict)
    problems = []
    for section, value in data.items():
        field = Policy.model_fields.get(section)
        if field is None:
            problems.append(f"{section}: not a policy key")
            continue
        try:
            TypeAdapter(field.annotation).validate_python(value)
        except ValidationError as exc:
            problems.append(f"{section}: {exc}")
    assert problems == [], f"{page.name}: {problems}"


def test_every_relative_link_resolves() -> None:
    broken = []
    for page in PAGES:
        for target in LINK.findall(prose(page.read_text())):
            if re.match(r"^[a-z]+:", target):
                continue  # http:, https:, mailto:
            file_part, _, anchor = target.partition("#")
            dest = (page.parent / file_part).resolve() if file_part else page
            if not dest.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert broken == []


def test_every_repository_path_named_in_the_docs_exists() -> None:
    """`gateway/...`, `tests/...`, `config/...` in code spans: a file moved without its docs fails here."""
    missing = []
    for page in PAGES:
        for span in SPAN.findall(prose(page.read_text())):
            name = (span.split() or [""])[0].split("::")[0]
            if not re.match(r"^(gateway|tests|config|perf|upstream_app|docs)/[\w./*-]*$", name):
                continue
            if name.startswith("perf/results"):
                continue  # written by load runs
            if not glob.glob(str(ROOT / name)):
                missing.append(f"{page.name}: {name}")
    assert missing == []
