"""Notices when the policy file changes on disk, by polling `os.stat` (simple, portable, no inotify needed).

What counts as "the file" is its fingerprint: the link itself (`lstat`), what it resolves to (`stat`, which
follows symlinks) and the resolved path. Editors that write a new file and rename it over the old one change
the inode; a Kubernetes ConfigMap update retargets the `..data` symlink, which changes the resolved path and
inode. A changed fingerprint is trusted only once it has held for two polls in a row (an editor writing in
place is not read half-way), and then only a changed content hash calls back: a `touch` is not a reload.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.logs import get_logger
from gateway.tasks import stop

log = get_logger("gateway.policy.watcher")

DEFAULT_INTERVAL = 0.25  # seconds: two polls to settle, so a change is seen in 0.5 s at most
OnChange = Callable[[str], Awaitable[object]]
StatKey = tuple[int, int, int, int]  # st_dev, st_ino, st_mtime_ns, st_size


def content_version(raw: bytes) -> str:
    """The version of a policy file's bytes, as the loader spells it (the first 12 hex digits of SHA-256)."""
    return hashlib.sha256(raw).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class Fingerprint:
    link: StatKey  # the path itself, not followed
    target: StatKey  # what the path resolves to
    resolved: str


def _key(st: os.stat_result) -> StatKey:
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def fingerprint(path: str | os.PathLike[str]) -> Fingerprint | None:
    """The file's identity and shape right now, or None while it does not exist (mid-swap, deleted)."""
    try:
        return Fingerprint(_key(os.lstat(path)), _key(os.stat(path)), os.path.realpath(path))
    except OSError:
        return None


class PolicyWatcher:
    """Polls one policy file and awaits `on_change(version)` when its content changes.

    `version` is the content version seen on disk; `last_version` is what the caller is running, so that a
    file edited between loading and starting the watcher is still noticed.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        on_change: OnChange,
        *,
        last_version: str | None = None,
        interval: float = DEFAULT_INTERVAL,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.path = Path(path)
        self.interval = interval
        self._on_change = on_change
        self._version = last_version
        self._handled = fingerprint(path)
        self._candidate: Fingerprint | None = None
        self._missing_logged = False
        self._task: asyncio.Task[None] | None = None

    @property
    def version(self) -> str | None:
        """The content version last seen on disk (None until the file could be read)."""
        return self._version

    def poll(self) -> str | None:
        """One look at the file: the new content version when a settled change is seen, else None."""
        current = fingerprint(self.path)
        if current is None:
            if not self._missing_logged:
                log.warning("policy_file_missing", path=str(self.path))
                self._missing_logged = True
            self._candidate = None
            return None
        self._missing_logged = False
        if current == self._handled:
            self._candidate = None
            return None
        if current != self._candidate:
            self._candidate = current  # wait one more poll: the writer may not be done
            return None
        self._handled, self._candidate = current, None
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            log.warning("policy_file_unreadable", path=str(self.path), error=str(exc))
            self._handled = None  # try again on the next poll
            return None
        version = content_version(raw)
        if version == self._version:
            return None  # same bytes: a touch, or a rewrite with the same content
        self._version = version
        return version

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                version = self.poll()
                if version is not None:
                    await self._on_change(version)
            except asyncio.CancelledError:
                raise
            except Exception:  # the watcher must outlive any one bad reload
                log.exception("policy_watch_failed", path=str(self.path))

    async def start(self) -> None:
        """Start polling in a background task."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"policy-watcher:{self.path}")

    async def close(self) -> None:
        """Stop polling. A reload the watcher started is cancelled, which applies nothing (swap is last)."""
        task, self._task = self._task, None
        await stop((task,))
