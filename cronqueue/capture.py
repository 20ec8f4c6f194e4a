"""A task's output, bounded: the head on disk, the tail in memory, what was lost counted.

The script's stdout and stderr are the write end of a pipe; the runner reads it while it waits
(:meth:`Capture.pump`). The first ``head`` bytes go to an unnamed file (in log_dir); after that
only the last ``tail`` bytes are kept, in memory. So what one task leaves on disk is bounded
whatever it prints, and the script itself never meets a full disk: if the file cannot take a
write (ENOSPC, EDQUOT, EIO, ...) the runner stops writing to it and keeps only the tail, and
the runner records in the row how many bytes were lost and why. The day log then gets head, a
marker line for what is missing, and tail.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass

_CHUNK = 1 << 16


@dataclass(frozen=True, slots=True)
class Captured:
    """What was kept of one task's output."""

    total: int  # bytes the script wrote
    head: int  # bytes kept at the start (in ``fd``, from offset 0)
    tail: bytes  # the last bytes (after the head), kept in memory
    not_kept: int  # bytes between head and tail, dropped
    disk_error: str  # why the head's file stopped taking output (strerror), "" if it did not
    fd: int | None  # the head's file, or None

    def marker(self, max_bytes: int) -> bytes:
        """The line standing for what is missing between head and tail (b"" if nothing)."""
        if not self.not_kept:
            return b""
        why = (f": log_dir failed ({self.disk_error})" if self.disk_error
               else f"; max_log_bytes={max_bytes}")
        return (f"\n[... {self.not_kept} more bytes not kept{why}: the first {self.head} and "
                f"the last {len(self.tail)} bytes are kept ...]\n").encode()

    def last(self, size: int) -> bytes:
        """The last ``size`` bytes of what was kept (head, then tail), without the marker."""
        if size <= 0:
            return b""
        if len(self.tail) >= size or self.fd is None or not self.head:
            return self.tail[-size:]
        start = max(0, self.head - (size - len(self.tail)))
        return os.pread(self.fd, self.head - start, start) + self.tail


class Capture:
    """One task's output pipe and what is kept of it. ``write_fd`` goes to the script (the
    caller closes its copy once the script is started: :meth:`started`)."""

    def __init__(self, file_fd: int | None, head: int, tail: int) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        os.set_blocking(self.write_fd, True)  # the script's end blocks as a file would
        self.file_fd = file_fd
        self.head_limit = head
        self.tail_limit = tail
        self.total = 0
        self.head = 0
        self.dropped = 0
        self.disk_error = "" if file_fd is not None else "no file could be created"
        self._tail = bytearray()
        self.eof = False

    def started(self) -> None:
        """The script has its copy of the write end: close ours (EOF comes when it is done)."""
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1

    def pump(self) -> None:
        """Take what the pipe holds now (it is non-blocking)."""
        while not self.eof:
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
            written = self._write(chunk[:self.head_limit - self.head])
            self.head += written
            chunk = chunk[written:]
        if chunk:  # past the head (or the file failed): the tail keeps the last bytes
            self._tail += chunk
            excess = len(self._tail) - self.tail_limit
            if excess > 0:
                del self._tail[:excess]
                self.dropped += excess

    def _write(self, data: bytes) -> int:
        assert self.file_fd is not None
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

    def finish(self) -> Captured:
        """Everything readable now (the script has exited), then what was kept. The read end
        is closed: a daemon the script left holding the write end gets EPIPE."""
        self.started()
        self.pump()
        os.close(self.read_fd)
        self.read_fd = -1
        return Captured(self.total, self.head, bytes(self._tail), self.dropped,
                        self.disk_error, self.file_fd)

    def close(self) -> None:
        """Close what is still open (the head's file too)."""
        self.started()
        for fd in (self.read_fd, self.file_fd):
            if fd is not None and fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.read_fd = -1
        self.file_fd = None


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
