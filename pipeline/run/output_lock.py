"""One run at a time per object-store output (the local one: a flock, output_folder.py).

OUT/.lock is an object created with `If-None-Match: *`, so of two runs that start
together exactly one creates it. Object stores have no process to notice a crash, so the
owner rewrites the lock's heartbeat every HEARTBEAT seconds and a lock not refreshed for
STALE seconds is taken over (a run killed with SIGKILL is resumable after STALE seconds, or
at once by deleting the object). Where the store cannot do conditional writes (older MinIO
and Ceph, some gateways) the run says so in one line and goes on unguarded: two runs into
one output then redo each other's units and the last manifest wins (same bytes if they are
the same run, a refused resume otherwise).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Iterator

from pipeline.errors import UsageError
from pipeline.format import storage
from pipeline.format.paths import LOCK_FILE

HEARTBEAT = 60.0
STALE = 300.0


def _record(token: str) -> bytes:
    return json.dumps(
        {"token": token, "host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time()}
    ).encode()


@contextlib.contextmanager
def object_lock(output: str, stale: float = STALE, beat: float = HEARTBEAT) -> Iterator[None]:
    uri = storage.join(output, LOCK_FILE)
    token = secrets.token_hex(16)
    try:
        created = storage.create_if_absent(uri, _record(token))
        if not created and _is_stale(uri, stale):
            storage.remove(uri)  # its owner stopped beating; of several takers one wins
            created = storage.create_if_absent(uri, _record(token))
    except storage.ConditionalWriteUnsupported as exc:
        print(f"warning: {output}: no lock against a second run ({exc}); do not start two "
              "runs into this output", file=sys.stderr)  # fmt: skip
        yield
        return
    if not created:
        held = _read(uri)
        raise UsageError(
            f"--output {output}: expected no other run writing there, found the lock of one "
            f"({LOCK_FILE}: host {held.get('host')}, pid {held.get('pid')}, last heartbeat "
            f"{time.time() - held.get('heartbeat', 0):.0f} s ago); wait for it to finish, or, "
            f"if no run is writing there, delete {uri} (taken over after {stale:.0f} s)"
        )
    stop = threading.Event()
    thread = threading.Thread(target=_beat, args=(uri, token, stop, beat), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        if _read(uri).get("token") == token:
            storage.remove(uri)


def _beat(uri: str, token: str, stop: threading.Event, every: float) -> None:
    while not stop.wait(every):
        with contextlib.suppress(OSError):
            if _read(uri).get("token") == token:
                storage.write_bytes_atomic(uri, _record(token))


def _read(uri: str) -> dict:
    try:
        return json.loads(storage.read_bytes(uri))
    except (OSError, ValueError):
        return {}


def _is_stale(uri: str, stale: float) -> bool:
    held = _read(uri)
    return time.time() - float(held.get("heartbeat", 0)) > stale
