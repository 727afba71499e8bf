"""One SQLite file shared by several real processes: liveness, events, secret, startup."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import time

import pytest

from repoll import OperationStatus, SQLiteStore
from repoll.core._headers import new_operation_id
from repoll.core._model import Operation
from repoll.core._status import Event
from repoll.stores import StoredResponse

pytestmark = pytest.mark.anyio

# Children run this with a mode and arguments; they talk back on stdout.
CHILD = r"""
import asyncio, dataclasses, fcntl, json, os, random, sys, time

mode, path, *args = sys.argv[1:]


def recovery_lock(seconds):
    # Holds the WAL index's write and recovery locks (bytes 120 and 122 of the
    # -shm file) and makes its two header copies disagree: every reader must
    # then run recovery, cannot, and waits on its busy timeout ("database is
    # locked"). Releasing lets the next reader rebuild the index from the WAL.
    fd = os.open(path + "-shm", os.O_RDWR)
    fcntl.lockf(fd, fcntl.LOCK_EX, 1, 120, os.SEEK_SET)
    fcntl.lockf(fd, fcntl.LOCK_EX, 1, 122, os.SEEK_SET)
    # pwrite, not mmap: closing a mapping closes a dup of fd, and closing any
    # descriptor of a file drops the process's fcntl locks on it.
    (change,) = os.pread(fd, 1, 56)
    os.pwrite(fd, bytes([(change + 1) % 256]), 56)
    print("locked", flush=True)
    time.sleep(seconds)
    os.close(fd)
    print("released", flush=True)


if mode == "recovery-lock":
    recovery_lock(float(args[0]))
    sys.exit()

from repoll import OperationStatus, SQLiteStore
from repoll.stores import StoredResponse
from repoll.core._headers import new_operation_id
from repoll.core._model import Operation
from repoll.core._status import Event


def running():
    now = time.time()
    return Operation(id=new_operation_id(), principal="p", endpoint="POST /x",
                     status=OperationStatus.RUNNING, created_at=now, updated_at=now)


def finished(op):
    done = op.apply(Event.FINISH_OK, now=time.time(), retention=60,
                    response=StoredResponse(200, (), b"ok"))
    return dataclasses.replace(done, version=op.version + 1)


async def main():
    if mode == "start":  # wait for the common start time, then open at once
        time.sleep(max(0.0, float(args[0]) - time.time()))
    store = SQLiteStore(path)
    await store.open()
    if mode == "owner":
        for owner in args:
            await store.heartbeat(owner, ttl=10)
        print("ready", flush=True)
        await asyncio.sleep(3600)
    elif mode == "fork-owner":
        await store.heartbeat(args[0], ttl=10)
        pid = os.fork()
        if pid == 0:  # a child that outlives its parent, as pool workers may
            os.write(1, b"forked\n")  # after the fork hooks ran; one write each
            time.sleep(30)
            os._exit(0)
        os.write(1, f"{pid}\n".encode())
        await asyncio.sleep(3600)
    elif mode == "finish":
        for _ in range(int(args[0])):
            op = running()
            await store.create(op)
            await asyncio.sleep(random.uniform(0.01, 0.06))  # lands anywhere in a poll period
            started = time.time()
            assert await store.compare_and_set(finished(op), expected_version=0)
            print(json.dumps(["finished", op.id, started]), flush=True)
        for k in range(3):
            started = time.time()
            await store.announce_cancel(f"cancel-{k}")
            print(json.dumps(["cancel", f"cancel-{k}", started]), flush=True)
            await asyncio.sleep(0.03)
    elif mode == "secret":
        print((await store.secret()).hex(), flush=True)
    elif mode == "start":
        await store.heartbeat(f"starter-{os.getpid()}", ttl=10)
        secret = await store.secret()
        await store.create(running())
        print(secret.hex(), flush=True)
    await store.close()


asyncio.run(main())
"""


def child(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )


async def line_from(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    return (await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 10)).strip()


async def finish(process: subprocess.Popen[str]) -> str:
    try:
        out, _ = await asyncio.to_thread(process.communicate, timeout=10)
    finally:
        process.kill()  # a no-op once it has exited
        process.wait(10)
    assert process.returncode == 0
    return out


def running() -> Operation:
    now = time.time()
    return Operation(
        id=new_operation_id(),
        principal="p",
        endpoint="POST /x",
        status=OperationStatus.RUNNING,
        created_at=now,
        updated_at=now,
    )


def finished(op: Operation, body: bytes = b"ok") -> Operation:
    done = op.apply(
        Event.FINISH_OK, now=time.time(), retention=60, response=StoredResponse(200, (), body)
    )
    return dataclasses.replace(done, version=op.version + 1)


async def until(condition, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_a_killed_process_stops_being_a_live_owner_at_once(tmp_path):
    path = str(tmp_path / "ops.db")
    odd = "worker:../host name/x:42:abcd1234"  # unsafe in a file name, kept exact
    store = SQLiteStore(path)
    await store.open()
    lock_dir = tmp_path / "ops.db-owners"
    process = child("owner", path, "child", odd)
    try:
        assert await line_from(process) == "ready"
        await store.heartbeat("parent", ttl=10)
        assert await store.live_owners() == {"parent", "child", odd}
        assert all(p.is_file() for p in lock_dir.iterdir())
        assert sorted(p.read_text() for p in lock_dir.iterdir()) == sorted(["parent", "child", odd])
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        assert await store.live_owners() == {"parent"}  # the very next call
        assert [p.read_text() for p in lock_dir.iterdir()] == ["parent"]
    finally:
        process.kill()
        process.wait(10)
        await store.close()
    assert list(lock_dir.iterdir()) == []  # close removes its own


async def test_a_forked_child_does_not_keep_its_dead_parent_alive(tmp_path):
    path = str(tmp_path / "ops.db")
    store = SQLiteStore(path)
    await store.open()
    parent = child("fork-owner", path, "forker")
    grandchild = None
    try:
        lines = {await line_from(parent), await line_from(parent)}
        lines.remove("forked")
        grandchild = int(lines.pop())
        assert await store.live_owners() == {"forker"}
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        assert await store.live_owners() == set()  # though its fork still runs
    finally:
        parent.kill()
        parent.wait(10)
        if grandchild is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(grandchild, signal.SIGKILL)
        await store.close()


async def test_instances_in_one_process_see_each_other_and_farewells(tmp_path):
    first, second = SQLiteStore(tmp_path / "ops.db"), SQLiteStore(tmp_path / "ops.db")
    await first.open()
    await second.open()
    await first.heartbeat("a", ttl=10)
    await second.heartbeat("b", ttl=10)
    await second.heartbeat("b", ttl=10)  # idempotent: still one file
    assert await first.live_owners() == await second.live_owners() == {"a", "b"}
    assert len(list((tmp_path / "ops.db-owners").iterdir())) == 2
    await second.heartbeat("b", ttl=-1)  # a farewell
    assert await first.live_owners() == {"a"}
    await first.close()
    await second.close()


async def test_events_cross_processes_quickly_and_never_echo(tmp_path):
    path = str(tmp_path / "ops.db")
    store, neighbour = SQLiteStore(path), SQLiteStore(path)
    await store.open()
    await neighbour.open()
    received: list[tuple[str, str, float]] = []
    await store.subscribe(lambda kind, op_id: received.append((kind, op_id, time.time())))
    seen_by_neighbour: list[tuple[str, str]] = []
    await neighbour.subscribe(lambda kind, op_id: seen_by_neighbour.append((kind, op_id)))
    try:
        # Its own events never come back to the store that sent them...
        mine = running()
        await store.create(mine)
        assert await store.compare_and_set(finished(mine), expected_version=0)
        await store.announce_cancel("mine")
        # ...but do reach another instance, in this process or another.
        await until(lambda: len(seen_by_neighbour) == 2)
        assert seen_by_neighbour == [("finished", mine.id), ("cancel", "mine")]

        count = 50
        out = await finish(child("finish", path, str(count)))
        await until(lambda: len(received) == count + 3)
        sent = [json.loads(line) for line in out.splitlines()]
        assert [(kind, op_id) for kind, op_id, _ in received] == [(k, i) for k, i, _ in sent]
        latencies = sorted(got[2] - s[2] for got, s in zip(received, sent, strict=True))
        p50 = statistics.median(latencies)
        p95 = latencies[int(0.95 * (len(latencies) - 1))]
        print(
            f"\nevent latency across processes: p50 {p50 * 1000:.1f} ms, "
            f"p95 {p95 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms"
        )
        assert latencies[-1] < 0.5
    finally:
        await store.close()
        await neighbour.close()


async def test_the_watcher_outlives_a_locked_database_and_asks_for_a_resync(tmp_path):
    path = str(tmp_path / "ops.db")
    store, other = SQLiteStore(path, timeout=0.3), SQLiteStore(path, timeout=0.3)
    await store.open()
    await other.open()
    received: list[tuple[str, str]] = []
    await store.subscribe(lambda kind, op_id: received.append((kind, op_id)))
    try:
        # An exclusive write transaction held past the timeout: WAL readers
        # (the watcher among them) read on, and nothing needs a resync.
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        await asyncio.sleep(0.8)
        blocker.execute("ROLLBACK")
        blocker.close()
        await other.announce_cancel("after-exclusive")
        await until(lambda: received == [("cancel", "after-exclusive")])

        # What does stop WAL readers: another process holding the index's
        # recovery lock, here for three times the watcher's timeout.
        locker = child("recovery-lock", path, "1.0")
        assert await line_from(locker) == "locked"
        with pytest.raises(Exception, match="locked"):
            await other.announce_cancel("while-locked")
        await finish(locker)
        await until(lambda: ("resync", "") in received)
        await other.announce_cancel("after-recovery")
        await until(lambda: ("cancel", "after-recovery") in received)
        assert received == [
            ("cancel", "after-exclusive"),
            ("resync", ""),
            ("cancel", "after-recovery"),
        ]
    finally:
        await store.close()
        await other.close()


async def test_a_watcher_that_missed_swept_events_asks_for_a_resync(tmp_path):
    path = str(tmp_path / "ops.db")
    store, other = SQLiteStore(path), SQLiteStore(path)
    await store.open()
    await other.open()
    await other.announce_cancel("before")  # numbered, then swept: no gap for a newcomer
    sweeper = sqlite3.connect(path, isolation_level=None)
    sweeper.execute("DELETE FROM repoll_events")
    received: list[tuple[str, str]] = []
    await store.subscribe(lambda kind, op_id: received.append((kind, op_id)))
    await other.announce_cancel("seen")
    await until(lambda: received == [("cancel", "seen")])
    # One commit that adds an event and sweeps it before the watcher looks.
    sweeper.executescript(
        "BEGIN; INSERT INTO repoll_events (at, origin, kind, operation_id) "
        "VALUES (0, 'elsewhere', 'cancel', 'unseen'); DELETE FROM repoll_events; COMMIT;"
    )
    sweeper.close()
    await other.announce_cancel("after")
    await until(lambda: len(received) == 3)
    assert received == [("cancel", "seen"), ("cancel", "after"), ("resync", "")]
    await store.close()
    await other.close()


async def test_the_cache_keeps_to_its_byte_budget(tmp_path):
    body = b"\x00" * (8 << 20)
    # With the default 16 MiB, an 8 MiB response is over a quarter: never cached.
    # With 64 MiB, the newest seven fit; the bound holds all along.
    for budget, count, most in ((16 << 20, 3, 0), (64 << 20, 60, 7)):
        store = SQLiteStore(tmp_path / f"ops-{budget}.db", cache_bytes=budget)
        await store.open()
        ids = []
        for i in range(count):
            op = running()
            await store.create(op)
            marked = i.to_bytes(4, "big") + body[4:]
            assert await store.compare_and_set(finished(op, marked), expected_version=0)
            assert await store.get(op.id) is not None  # cached when read
            ids.append(op.id)
            assert store._cached_bytes <= budget
        assert len(store._terminal) == most
        assert store._cached_bytes == sum(cost for _, cost in store._terminal.values())
        for i in (0, count // 2, count - 1):
            got = await store.get(ids[i])
            assert got.response.body[:4] == i.to_bytes(4, "big")
            assert len(got.response.body) == len(body)
            assert store._cached_bytes <= budget
        await store.close()
        assert store._cached_bytes == 0


async def test_the_secret_is_one_per_file(tmp_path):
    path = str(tmp_path / "ops.db")
    store = SQLiteStore(path)
    await store.open()
    secret = await store.secret()
    assert len(secret) == 32
    assert await store.secret() == secret
    from_child = (await finish(child("secret", path))).strip()
    assert bytes.fromhex(from_child) == secret
    elsewhere = SQLiteStore(tmp_path / "other.db")
    await elsewhere.open()
    assert await elsewhere.secret() != secret
    await elsewhere.close()
    await store.close()
    memories = [SQLiteStore(":memory:"), SQLiteStore(":memory:")]
    for memory in memories:
        await memory.open()
    one, two = [await memory.secret() for memory in memories]
    assert len(one) == 32
    assert one != two
    for memory in memories:
        await memory.close()


async def test_eight_processes_open_a_new_file_at_once(tmp_path):
    path = str(tmp_path / "fresh.db")
    start = time.time() + 2.0  # past every child's import
    processes = [child("start", path, str(start)) for _ in range(8)]
    outputs = await asyncio.gather(*(finish(process) for process in processes))
    secrets_seen = {out.strip() for out in outputs}
    assert len(secrets_seen) == 1
    store = SQLiteStore(path)
    await store.open()
    assert len(await store.unfinished()) == 8
    assert (await store.secret()).hex() in secrets_seen
    assert await store.live_owners() == set()  # every child closed its store
    await store.close()
