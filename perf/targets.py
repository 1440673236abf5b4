"""vegeta's HTTP target format: `METHOD URL`, header lines, an optional `@body-file` line, blank lines
between targets.

The same files feed `vegeta attack -targets FILE` and the built-in attacker, so the parser follows vegeta's
rules: a target starts with an upper-case method word; `Name: value` lines add headers (repeats and case
kept);
`@path` reads the body from a file (relative paths from `base_dir`, vegeta uses the working directory); a
blank line or the next `METHOD URL` line ends a target. Lines starting with `#` are comments.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

_METHOD = re.compile(r"^[A-Z]+\s")


class TargetError(ValueError):
    """A target file that cannot be used; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class Target:
    """One request blueprint."""

    method: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    body_path: str | None = None  # as written after `@`, kept so the target can be written back
    line: int = 0

    def header(self, name: str) -> str | None:
        """The first value of a header (case-insensitive), or None."""
        lower = name.lower()
        return next((v for k, v in self.headers if k.lower() == lower), None)


def _check_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def parse_targets(text: str, *, base_dir: Path | None = None, source: str = "<targets>") -> list[Target]:
    """Parse target text; raises TargetError naming the line of the first problem."""
    base = base_dir if base_dir is not None else Path.cwd()
    lines = text.splitlines()
    targets: list[Target] = []
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        line_no = i
        if not _METHOD.match(line + " "):
            raise TargetError(f"{source}:{line_no}: expected 'METHOD URL', got {line!r}")
        parts = line.split(None, 1)
        if len(parts) != 2:
            raise TargetError(f"{source}:{line_no}: expected 'METHOD URL', got {line!r}")
        method, url = parts[0], parts[1].strip()
        if not _check_url(url):
            raise TargetError(f"{source}:{line_no}: bad URL {url!r} (an absolute http(s) URL is needed)")
        headers: list[tuple[str, str]] = []
        body, body_path = b"", None
        while i < len(lines):
            raw = lines[i].strip()
            if not raw or _METHOD.match(raw):
                break
            i += 1
            if raw.startswith("#"):
                continue
            if raw.startswith("@"):
                body_path = raw[1:]
                path = Path(body_path)
                path = path if path.is_absolute() else base / path
                try:
                    body = path.read_bytes()
                except OSError as exc:
                    raise TargetError(f"{source}:{i}: bad body file {body_path!r}: {exc.strerror}") from None
                break  # like vegeta: the body line ends the target
            name, sep, value = raw.partition(":")
            if not sep or not name.strip() or not value.strip():
                raise TargetError(f"{source}:{i}: bad header line {raw!r} (expected 'Name: value')")
            headers.append((name.strip(), value.strip()))
        targets.append(Target(method, url, tuple(headers), body, body_path, line_no))
    if not targets:
        raise TargetError(f"{source}: no targets")
    return targets


def load_targets(path: Path | str, *, base_dir: Path | None = None) -> list[Target]:
    """Read and parse a target file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise TargetError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_targets(text, base_dir=base_dir, source=str(path))


def format_targets(targets: Iterable[Target]) -> str:
    """Write targets back in vegeta's format (bodies by their `@path`; targets without one get no body)."""
    blocks = []
    for target in targets:
        lines = [f"{target.method} {target.url}"]
        lines.extend(f"{name}: {value}" for name, value in target.headers)
        if target.body_path is not None:
            lines.append(f"@{target.body_path}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"
