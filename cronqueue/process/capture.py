"""A task's output, bounded: the head kept (in memory, then on disk), the tail in memory.

The script's stdout and stderr are the write end of a pipe; the runner reads it while it waits
(:meth:`Capture.pump`). The first ``head`` bytes are kept: up to 64 KiB in memory (a small
task's output never touches the disk until the day log), the rest in an unnamed file (in
log_dir), made when first needed. After that only the last ``tail`` bytes are kept, in memory.
So what one task leaves on disk is bounded whatever it prints, and the script itself never
meets a full disk: if the file cannot be made or take a write (ENOSPC, EDQUOT, EIO, ...) the
runner stops writing to it and keeps only the tail, and records in the row how many bytes were
lost and why. The day log then gets head, a marker line for what is missing, and tail.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

_CHUNK = 1 << 16
_IN_MEMORY = 1 << 16  # bytes of the head kept in memory before a file is made
# After the script's exit, at most this many reads: what it wrote before exiting is at most a
# pipe's worth; a daemon it left holding the pipe may write on and on.
_DRAIN_READS = 64


@dataclass(frozen=True, slots=True)
class Captured:
    """What was kept of one task's output."""

    total: int  # bytes the script wrote
    head: int  # bytes kept at the start: ``memory``, then the rest in ``fd`` from offset 0
    memory: bytes
    fd: int | None
    tail: bytes  # the last bytes (after the head), kept in memory
    not_kept: int  # bytes between head and tail, dropped
    disk_error: str  # why the head's file stopped taking output (strerror), "" if it did not

    def marker(self, max_bytes: int) -> bytes:
        """The line standing for what is missing between head and tail (b"" if nothing)."""
        if not self.not_kept:
            return b""
        why = (f": log_dir failed ({self.disk_error})" if self.disk_error
               else f"; max_log_bytes={max_bytes}")
        return (f"\n[... {self.not_kept} more bytes not kept{why}: the first {self.head} and "
                f"the last {len(self.tail)} bytes are kept ...]\n").encode()

    def head_chunks(self, start: int = 0) -> Iterator[bytes]:
        """The head from ``start``, in pieces of at most 1 MiB."""
        return _head_chunks(self.memory, self.head, self.fd, start)

    def last(self, size: int) -> bytes:
        """The last ``size`` bytes of what was kept (head, then tail), without the marker."""
        return _last(size, self.memory, self.head, self.fd, self.tail)


class Capture:
    """One task's output pipe and what is kept of it. ``write_fd`` goes to the script (the
    caller closes its copy once the script is started: :meth:`started`). ``make_file`` gives
    the file for the head beyond what is kept in memory (None: none could be made)."""

    def __init__(self, make_file: Callable[[], int | None], head: int, tail: int) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        os.set_blocking(self.write_fd, True)  # the script's end blocks as a file would
        self.make_file = make_file
        self.file_fd: int | None = None
        self.head_limit = head
        self.tail_limit = tail
        self.total = 0
        self.head = 0
        self.dropped = 0
        self.disk_error = ""
        self._memory = bytearray()
        self._tail = bytearray()
        self.eof = False

    def started(self) -> None:
        """The script has its copy of the write end: close ours (EOF comes when it is done)."""
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1

    def pump(self, max_reads: int | None = None) -> None:
        """Take what the pipe holds now (it is non-blocking)."""
        reads = 0
        while not self.eof and (max_reads is None or reads < max_reads):
            reads += 1
            try:
                chunk = os.read(self.read_fd, _CHUNK)
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            if not chunk:
                self.eof = True
                return
            self._keep(chunk)

    def _keep(self, chunk: bytes) -> None:
        self.total += len(chunk)
        if self.head < self.head_limit and not self.disk_error:
            part = chunk[:self.head_limit - self.head]
            in_memory = part[:_IN_MEMORY - len(self._memory)]
            self._memory += in_memory
            written = len(in_memory)
            if written < len(part):
                written += self._write(part[written:])
            self.head += written
            chunk = chunk[written:]
        if chunk:  # past the head (or the file failed): the tail keeps the last bytes
            self._tail += chunk
            excess = len(self._tail) - self.tail_limit
            if excess > 0:
                del self._tail[:excess]
                self.dropped += excess

    def _write(self, data: bytes) -> int:
        if self.file_fd is None:
            self.file_fd = self.make_file()
            if self.file_fd is None:
                self.disk_error = "no file could be made for it"
                return 0
        done = 0
        view = memoryview(data)
        while done < len(data):
            try:
                done += os.write(self.file_fd, view[done:])
            except InterruptedError:
                continue
            except OSError as exc:
                self.disk_error = exc.strerror or str(exc)
                return done
        return done

    def last(self, size: int) -> bytes:
        """The last ``size`` bytes kept so far (head, then tail), while the script runs: what
        the row's tail would be if it ended now (a copy of at most ``size`` bytes)."""
        return _last(size, self._memory, self.head, self.file_fd, self._tail)

    def finish(self) -> Captured:
        """Everything readable now (the script has exited), then what was kept. The read end
        is closed: a daemon the script left holding the write end gets EPIPE."""
        self.started()
        self.pump(_DRAIN_READS)
        os.close(self.read_fd)
        self.read_fd = -1
        return Captured(self.total, self.head, bytes(self._memory), self.file_fd,
                        bytes(self._tail), self.dropped, self.disk_error)

    def close(self) -> None:
        """Close what is still open (the head's file too)."""
        self.started()
        for fd in (self.read_fd, self.file_fd):
            if fd is not None and fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.read_fd = -1
        self.file_fd = None


def _head_chunks(memory: bytes | bytearray, head: int, fd: int | None,
                 start: int) -> Iterator[bytes]:
    """The head (``memory``, then the rest of ``head`` bytes in ``fd`` from offset 0) from
    ``start``, in pieces of at most 1 MiB."""
    if start < len(memory):
        yield bytes(memory[start:])
    offset = max(0, start - len(memory))
    while fd is not None and offset < head - len(memory):
        chunk = os.pread(fd, min(head - len(memory) - offset, 1 << 20), offset)
        if not chunk:
            return
        yield chunk
        offset += len(chunk)


def _last(size: int, memory: bytes | bytearray, head: int, fd: int | None,
          tail: bytes | bytearray) -> bytes:
    """The last ``size`` bytes of a head followed by ``tail``."""
    if size <= 0:
        return b""
    if len(tail) >= size or not head:
        return bytes(tail[-size:])
    start = max(0, head - (size - len(tail)))
    return b"".join(_head_chunks(memory, head, fd, start)) + tail


def unnamed_file(dir_fd: int | None) -> int | None:
    """An unnamed read-write file in the directory ``dir_fd`` (else in the temporary
    directory), or None if neither can be had."""
    if dir_fd is not None:
        try:
            return os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        except OSError:
            pass
    try:
        with tempfile.TemporaryFile() as handle:
            return os.dup(handle.fileno())
    except OSError:
        return None
