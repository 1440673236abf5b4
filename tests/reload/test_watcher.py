"""The policy file watcher on a real filesystem: what counts as a change, and what does not."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from gateway.policy.loader import load_policy
from gateway.policy.watcher import PolicyWatcher, content_version

POLICY = (
    'version: 1\nupstreams: {{app: {{url: "http://127.0.0.1:{port}"}}}}\n'
    'routes: [{{name: a, match: "GET /a", upstream: app}}]\n'
)


async def _never(version: str) -> None:
    raise AssertionError("poll() tests do not run the watcher task")


def watcher_for(path: Path) -> PolicyWatcher:
    return PolicyWatcher(path, _never, last_version=content_version(path.read_bytes()))


def settle(watcher: PolicyWatcher) -> str | None:
    """Two polls: the first sees a change, the second (same fingerprint) trusts it."""
    first = watcher.poll()
    assert first is None, "a change is never acted on at the first sighting"
    return watcher.poll()


def test_the_watcher_version_is_the_loader_version(tmp_path: Path) -> None:
    path = tmp_path / "policies.yaml"
    path.write_text(POLICY.format(port=8001))
    assert content_version(path.read_bytes()) == load_policy(path).version


def test_nothing_changed_nothing_reported(tmp_path: Path) -> None:
    path = tmp_path / "policies.yaml"
    path.write_text(POLICY.format(port=8001))
    watcher = watcher_for(path)
    assert [watcher.poll() for _ in range(3)] == [None, None, None]


def test_touch_without_a_content_change_is_not_a_change(tmp_path: Path) -> None:
    path = tmp_path / "policies.yaml"
    path.write_text(POLICY.format(port=8001))
    watcher = watcher_for(path)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert settle(watcher) is None
    assert watcher.poll() is None  # and it is not re-read on every poll afterwards either


def test_write_in_place_is_reported_once_settled(tmp_path: Path) -> None:
    path = tmp_path / "policies.yaml"
    path.write_text(POLICY.format(port=8001))
    watcher = watcher_for(path)
    full = POLICY.format(port=8002)
    with path.open("w") as f:  # an editor writing in place, caught half-way
        f.write(full[:20])
        f.flush()
        assert watcher.poll() is None
        f.write(full[20:])
    assert watcher.poll() is None  # the file moved on since the last poll: not settled yet
    assert watcher.poll() == content_version(full.encode())
    assert watcher.poll() is None


def test_atomic_rename_is_noticed(tmp_path: Path) -> None:
    path = tmp_path / "policies.yaml"
    path.write_text(POLICY.format(port=8001))
    watcher = watcher_for(path)
    new = tmp_path / ".policies.yaml.swp"
    new.write_text(POLICY.format(port=8002))
    os.replace(new, path)
    assert settle(watcher) == content_version(path.read_bytes())


def test_configmap_symlink_swap_is_noticed_even_with_equal_size_and_mtime(tmp_path: Path) -> None:
    # The Kubernetes layout: policies.yaml -> ..data/policies.yaml, ..data -> ..<timestamp>/
    mount = tmp_path / "config"
    (mount / "..v1").mkdir(parents=True)
    (mount / "..v1" / "policies.yaml").write_text(POLICY.format(port=8001))
    (mount / "..data").symlink_to("..v1")
    (mount / "policies.yaml").symlink_to("..data/policies.yaml")
    path = mount / "policies.yaml"
    watcher = watcher_for(path)

    (mount / "..v2").mkdir()
    (mount / "..v2" / "policies.yaml").write_text(POLICY.format(port=8002))  # same size as v1
    old = (mount / "..v1" / "policies.yaml").stat()
    os.utime(mount / "..v2" / "policies.yaml", ns=(old.st_atime_ns, old.st_mtime_ns))
    (mount / "..data_tmp").symlink_to("..v2")
    os.replace(mount / "..data_tmp", mount / "..data")  # what kubelet does: one atomic rename

    assert settle(watcher) == content_version(POLICY.format(port=8002).encode())


def test_a_missing_file_is_waited_for(tmp_path: Path) -> None:
    path = tmp_path / "policies.yaml"
    path.write_text(POLICY.format(port=8001))
    watcher = watcher_for(path)
    path.unlink()
    assert [watcher.poll() for _ in range(3)] == [None, None, None]
    path.write_text(POLICY.format(port=8003))
    assert settle(watcher) == content_version(path.read_bytes())


async def test_the_running_watcher_calls_back_within_a_second(tmp_path: Path) -> None:
    path = tmp_path / "policies.yaml"
    path.write_text(POLICY.format(port=8001))
    seen: asyncio.Queue[str] = asyncio.Queue()

    async def on_change(version: str) -> None:
        seen.put_nowait(version)

    watcher = PolicyWatcher(path, on_change, last_version=content_version(path.read_bytes()))
    await watcher.start()
    try:
        path.write_text(POLICY.format(port=8009))
        version = await asyncio.wait_for(seen.get(), timeout=1.0)
        assert version == load_policy(path).version
        assert seen.empty()
    finally:
        await watcher.close()
