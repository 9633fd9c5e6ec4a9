"""Recording (``--record DIR``): every frame a worker receives, as the bytes that arrived.

Layout: ``DIR/<client>/<YYYY-MM-DD>/<HHMMSS.mmm>-<seq>.jpg`` (UTC, from ingest's receive time,
so names sort in arrival order and ``camstream send --source DIR/<client>/<date>`` replays a
day), plus one index per session, ``DIR/<client>/<date>/<session>.jsonl``: a line per frame
with its header and the processor's result.

The workers record, not ingest: they hold the bytes and the result already, and ingest must
never wait for a disk. Within a worker a thread of its own writes, behind a bounded queue, so a
slow disk costs recordings (counted ``record_dropped``), never processing. Each file is written
under a temporary name (``.NAME.wN.tmp``, never ``*.jpg``), fsync'ed, then renamed: a crash
leaves no partial ``.jpg``; the next worker with the same index removes its predecessor's
temporary files. A failed write (disk full, unwritable directory) is counted
(``record_errors``) and logged once per kind; the worker goes on. With a size limit, the oldest
days (over all clients) are deleted, never the current day.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import queue
import re
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from camstream.names import safe
from camstream.wire import Header

log = logging.getLogger("camstream.worker")

QUEUE_FRAMES = 64     # frames waiting for the disk before recordings are dropped
PRUNE_EVERY_S = 30.0  # how often the size limit is checked
DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def frame_path(root: Path, header: Header) -> tuple[Path, str]:
    """The day directory and file name of a frame: sortable by name in arrival order."""
    seconds, ns = divmod(header.recv_ns, 1_000_000_000)
    tm = time.gmtime(seconds)
    day = root / safe(header.client) / time.strftime("%Y-%m-%d", tm)
    return day, f"{time.strftime('%H%M%S', tm)}.{ns // 1_000_000:03d}-{header.seq:08d}.jpg"


class Recorder:
    """A worker's recording thread. ``put`` never blocks (the worker loop calls it)."""

    def __init__(self, root: str, max_bytes: int, index: int,
                 log_once: Callable[..., None]) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.index = index
        self.log_once = log_once
        self.queue: queue.Queue = queue.Queue(QUEUE_FRAMES)
        self.made: set[Path] = set()
        self.indexes: dict[Path, int] = {}  # session index path -> fd (O_APPEND)
        self.sizes: dict[tuple[str, int], int] = {}  # (day dir, mtime_ns) -> bytes
        self.thread = threading.Thread(target=self.run, name="recorder", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def put(self, header: Header, jpeg, result: bytes, counts) -> None:
        """Queue a frame (``jpeg``: any buffer, kept without copying) and its result JSON."""
        try:
            self.queue.put_nowait((header, jpeg, result, counts))
        except queue.Full:
            counts.record_dropped += 1
            self.log_once("record-queue", "recording cannot keep up with %s: frames are "
                          "processed but not recorded", header.client)

    def close(self, timeout: float) -> None:
        """Write what is queued (within ``timeout``), then stop."""
        try:
            self.queue.put(None, timeout=timeout)
        except queue.Full:
            pass
        self.thread.join(timeout)
        for fd in self.indexes.values():
            os.close(fd)
        self.indexes.clear()

    def run(self) -> None:
        self.remove_temporaries()
        next_prune = 0.0
        while True:
            if self.max_bytes and time.monotonic() >= next_prune:
                self.prune()
                next_prune = time.monotonic() + PRUNE_EVERY_S
            try:
                item = self.queue.get(timeout=PRUNE_EVERY_S)
            except queue.Empty:
                continue
            if item is None:
                return
            self.write(*item)

    def write(self, header: Header, jpeg, result: bytes, counts) -> None:
        day, name = frame_path(self.root, header)
        tmp = day / f".{name}.w{self.index}.tmp"
        try:
            if day not in self.made:
                day.mkdir(parents=True, exist_ok=True)
                self.made.add(day)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
            try:
                view = memoryview(jpeg)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, day / name)
            line = (b'{"file":"%s","client":%s,"session":%s,"seq":%d,"recv_ns":%d,"size":%d,'
                    b'"result":%s}\n') % (name.encode(), _json_str(header.client),
                                           _json_str(header.session), header.seq,
                                           header.recv_ns, header.size, result)
            os.write(self.index_fd(day, header.session), line)
            counts.recorded += 1
        except OSError as e:
            counts.record_errors += 1
            try:
                os.unlink(tmp)
            except OSError:
                pass
            self.made.discard(day)
            kind = "disk full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else e.strerror
            self.log_once(f"record {e.errno}", "cannot record to %s: %s; frames go on being "
                          "processed, failed recordings are counted (record_errors)",
                          self.root, kind)

    def index_fd(self, day: Path, session: str) -> int:
        path = day / f"{safe(session)}.jsonl"
        fd = self.indexes.get(path)
        if fd is None:
            if len(self.indexes) >= 64:
                for old in self.indexes.values():
                    os.close(old)
                self.indexes.clear()
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            self.indexes[path] = fd
        return fd

    def remove_temporaries(self) -> None:
        """What this worker's predecessor (same index) was writing when it died."""
        if not self.root.is_dir():
            return
        for tmp in self.root.glob(f"*/*/.*.w{self.index}.tmp"):
            try:
                tmp.unlink()
            except OSError:
                pass

    # -- the size limit ----------------------------------------------------------------------

    def prune(self) -> None:
        """Delete the oldest days until the recordings fit ``max_bytes``; one worker at a
        time (a lock file), never the current day (UTC)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            lock = os.open(self.root / ".prune.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                           0o640)
        except OSError:
            return  # the writes report the problem
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock)
            return
        try:
            days = sorted(self.days(), key=lambda d: (d[0].name, str(d[0])))
            total = sum(size for _, size in days)
            today = time.strftime("%Y-%m-%d", time.gmtime())
            for path, size in days:
                if total <= self.max_bytes or path.name >= today:
                    break
                shutil.rmtree(path, ignore_errors=True)
                self.made.discard(path)
                total -= size
                log.info("recordings over %.2f GB: removed %s (%.1f MB)",
                         self.max_bytes / 1e9, path, size / 1e6)
            if total > self.max_bytes:
                self.log_once("record-limit", "today's recordings alone exceed the limit "
                              "(%.2f GB); they are kept", self.max_bytes / 1e9)
        finally:
            os.close(lock)

    def days(self) -> list[tuple[Path, int]]:
        out = []
        seen = set()
        for client in self.root.iterdir():
            if not client.is_dir() or client.name.startswith("."):
                continue
            for day in client.iterdir():
                if not DAY_RE.match(day.name) or not day.is_dir():
                    continue
                try:
                    key = (str(day), day.stat().st_mtime_ns)
                except OSError:
                    continue
                size = self.sizes.get(key)
                if size is None:
                    size = sum(e.stat().st_size for e in os.scandir(day) if e.is_file())
                    self.sizes[key] = size
                seen.add(key)
                out.append((day, size))
        self.sizes = {k: v for k, v in self.sizes.items() if k in seen}
        return out


def _json_str(text: str) -> bytes:
    import json
    return json.dumps(text).encode()
