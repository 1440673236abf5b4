"""The file backend of the audit trail: JSON-lines segments under `audit.dir`, bounded by age and by size.

Segments are named `audit-<unix ms>-<n>.jsonl` (the main stream) and `audit.<stream>-<unix ms>-<n>.jsonl`
(the flood streams, see gateway.audit.record), by the time of their first record, so their order is time
order. A segment rotates past `audit.max_file_size` (or a sixteenth of `audit.max_total_bytes`, if smaller:
the cap then frees space a small slice at a time). Past `audit.max_age` a segment is deleted; past
`audit.max_total_bytes` for the whole directory the oldest segments go first, those of the flood streams
before any of the main one, and every record deleted so is counted (`evicted`).

Blocking file work runs in a worker thread; the event loop never waits for the disk.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import IO

import orjson

from gateway.audit import record
from gateway.audit.record import FLOOD_STREAMS, MAIN, PAGE, SLACK, STREAMS, Batch, Entry, Record, iso
from gateway.policy.model import Audit

_SEGMENT = re.compile(r"^audit(?:\.([a-z_]+))?-(\d{13})-(\d{3})\.jsonl$")
PRUNE_EVERY = 3600.0  # age pruning runs at most this often, on a write


def _stream_name(stream: str) -> str:
    return "audit" if stream == MAIN else f"audit.{stream}"


def _count_lines(path: Path) -> int:
    count = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            count += chunk.count(b"\n")
    return count


class _Segment:
    """The segment a stream is appending to."""

    __slots__ = ("handle", "path", "size")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle: IO[bytes] = open(path, "ab")  # noqa: SIM115 - held open across batches
        self.size = self.handle.tell()


class FileStore:
    """JSON-lines segments in one directory, one series per stream. Append-only, fsynced per batch."""

    kind = "file"
    failure_is_final = True  # a failed append is cut back, and retries skip what is stored

    def __init__(self, directory: Path, settings: Audit, clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self.max_total_bytes = settings.max_total_bytes
        self._max_size = min(settings.max_file_size, max(4096, settings.max_total_bytes // 16))
        self._max_age = settings.max_age
        self._clock = clock
        self._open: dict[str, _Segment] = {}
        self._resumed = False
        self._total = 0  # bytes in every segment of the directory
        self._stored: dict[tuple[str, str], int] = {}  # (writer, stream) -> highest seq stored
        self._pruned_at = 0.0
        self.evicted = 0  # records deleted to keep the directory under max_total_bytes
        self._lock = threading.Lock()

    # -- the directory --

    def segments(self, stream: str | None = None) -> list[Path]:
        """The segments of one stream (every stream when None), oldest first."""
        try:
            names = os.listdir(self.directory)
        except (FileNotFoundError, NotADirectoryError):
            return []
        found = []
        for name in names:
            m = _SEGMENT.match(name)
            if m is not None and (stream is None or (m.group(1) or MAIN) == stream):
                found.append((int(m.group(2)), int(m.group(3)), name))
        return [self.directory / name for _, _, name in sorted(found)]

    @staticmethod
    def _start(path: Path) -> float:
        m = _SEGMENT.match(path.name)
        assert m is not None
        return int(m.group(2)) / 1000

    @staticmethod
    def _stream(path: Path) -> str:
        m = _SEGMENT.match(path.name)
        assert m is not None
        return m.group(1) or MAIN

    def _resume(self) -> None:
        """Continue each stream's newest segment if it has room; a torn last line (a crash) is ended first."""
        self.directory.mkdir(parents=True, exist_ok=True)
        every = self.segments()
        self._total = sum(self._size_of(p) for p in every)
        for stream in STREAMS:
            mine = [p for p in every if self._stream(p) == stream]
            if mine and self._size_of(mine[-1]) < self._max_size:
                segment = self._open[stream] = _Segment(mine[-1])
                if segment.size:
                    with open(segment.path, "rb") as f:
                        f.seek(-1, os.SEEK_END)
                        torn = f.read(1) != b"\n"
                    if torn:
                        self._write(segment, b"\n")
        self._resumed = True

    @staticmethod
    def _size_of(path: Path) -> int:
        try:
            return path.stat().st_size
        except FileNotFoundError:
            return 0

    def _new_segment(self, stream: str, first: bytes) -> _Segment:
        """Start a segment named after its first record's time, so every record in it is at or after that."""
        self._close(stream)
        try:
            ms = int(datetime.fromisoformat(orjson.loads(first)["time"]).timestamp() * 1000)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            ms = int(self._clock() * 1000)
        n = 0
        while (path := self.directory / f"{_stream_name(stream)}-{ms:013d}-{n:03d}.jsonl").exists():
            n += 1
        segment = self._open[stream] = _Segment(path)
        return segment

    def _close(self, stream: str) -> None:
        segment = self._open.pop(stream, None)
        if segment is not None:
            segment.handle.close()

    def _write(self, segment: _Segment, data: bytes) -> None:
        """Append durably; on failure the segment is cut back to where it was, so a retry adds no copy."""
        start = segment.size
        try:
            segment.handle.write(data)
            segment.handle.flush()
            os.fsync(segment.handle.fileno())
        except BaseException:
            try:
                segment.handle.truncate(start)
            except OSError:
                self._open.pop(self._stream(segment.path), None)  # reopened (torn line ended) on the next try
                segment.handle.close()
            raise
        segment.size += len(data)
        self._total += len(data)

    # -- writing --

    def _append_stream(self, writer: str, stream: str, entries: list[Entry]) -> None:
        done = self._stored.get((writer, stream), 0)
        entries = [e for e in entries if e.seq > done]  # stored by an attempt that failed later on
        if not entries:
            return
        data = b"".join(e.line + b"\n" for e in entries)
        segment = self._open.get(stream)
        if segment is None or (segment.size and segment.size + len(data) > self._max_size):
            segment = self._new_segment(stream, entries[0].line)
        self._write(segment, data)
        self._stored[(writer, stream)] = entries[-1].seq

    def _append(self, batch: Batch) -> None:
        if not self._resumed:
            self._resume()
        for stream, entries in batch.by_stream().items():
            self._append_stream(batch.writer, stream, entries)
        if self._total > self.max_total_bytes:
            self._evict()
        if self._clock() - self._pruned_at > PRUNE_EVERY:
            self._prune()

    def _evict(self) -> None:
        """Delete the oldest segments until the directory fits max_total_bytes: flood streams' first."""
        current = {segment.path for segment in self._open.values()}
        every = [p for p in self.segments() if p not in current]
        flood = [p for p in every if self._stream(p) in FLOOD_STREAMS]
        flood.sort(key=self._start)
        for path in flood + [p for p in every if self._stream(p) == MAIN]:
            if self._total <= self.max_total_bytes:
                return
            try:
                size, lines = path.stat().st_size, _count_lines(path)
                path.unlink()
            except FileNotFoundError:
                continue
            self._total -= size
            self.evicted += lines

    def _prune(self) -> None:
        """Delete segments whose last write is older than max_age (never one being written)."""
        self._pruned_at = now = self._clock()
        current = {segment.path for segment in self._open.values()}
        for path in self.segments():
            if path in current:
                continue
            try:
                stat = path.stat()
                if now - stat.st_mtime > self._max_age:
                    path.unlink()
                    self._total -= stat.st_size
            except FileNotFoundError:
                pass

    def _append_locked(self, batch: Batch) -> None:
        with self._lock:  # an attempt abandoned at shutdown may still be running in its thread
            self._append(batch)

    async def append(self, batch: Batch) -> None:
        """Append records durably (written and fsynced) before returning; a retried batch is stored once."""
        await asyncio.to_thread(self._append_locked, batch)

    # -- reading --

    @staticmethod
    def _read_page(path: Path, offset: int, max_lines: int) -> tuple[list[bytes], int]:
        """Up to `max_lines` complete lines from `offset`; a line still being written is left for later."""
        lines: list[bytes] = []
        with open(path, "rb") as f:
            f.seek(offset)
            while len(lines) < max_lines:
                line = f.readline()
                if not line.endswith(b"\n"):
                    break
                offset += len(line)
                if line.strip():
                    lines.append(line)
        return lines, offset

    def scan(self, start: float, end: float) -> AsyncIterator[list[Record]]:
        """Pages of records with start <= time <= end from every stream, merged by time, oldest first."""
        return record.merge([self._scan(stream, start, end) for stream in STREAMS])

    async def _scan(self, stream: str, start: float, end: float) -> AsyncIterator[list[Record]]:
        """Pages of one stream's records in the range, oldest first, never more than a page in memory."""
        low, high, beyond = iso(start), iso(end), iso(end + SLACK)
        segments = self.segments(stream)
        for i, path in enumerate(segments):
            if i + 1 < len(segments) and self._start(segments[i + 1]) < start - SLACK:
                continue  # the next segment's first record precedes the range: this one holds older ones
            if self._start(path) > end + SLACK:
                return
            offset = 0
            while True:
                try:
                    lines, offset = await asyncio.to_thread(self._read_page, path, offset, PAGE)
                except FileNotFoundError:
                    break  # deleted by age or size while we read
                if not lines:
                    break
                page: list[Record] = []
                past = False
                for line in lines:
                    found, past = record.in_range(line, low, high, beyond)
                    if found is not None:
                        page.append(found)
                    if past:
                        break  # records are in emission order: the rest are later still
                if page:
                    yield page
                if past:
                    return

    # -- health --

    def _probe(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        probe = self.directory / ".write-probe"
        with open(probe, "wb") as f:
            f.write(b"ok\n")
        probe.unlink()

    async def probe(self) -> str | None:
        """Why records cannot be written now (the directory cannot be created or written), or None."""
        try:
            await asyncio.to_thread(self._probe)
        except OSError as exc:
            return f"audit directory {self.directory} is not writable: {exc.strerror or exc}"
        return None

    def _readable(self) -> bool:
        try:
            os.listdir(self.directory)
        except FileNotFoundError:
            return True  # nothing written yet
        except OSError:
            return False
        return True

    async def ping(self) -> bool:
        """Whether the directory can be read (writing is `probe`'s question)."""
        return await asyncio.to_thread(self._readable)

    def _close_all(self) -> None:
        for stream in list(self._open):
            self._close(stream)

    async def close(self) -> None:
        await asyncio.to_thread(self._close_all)
