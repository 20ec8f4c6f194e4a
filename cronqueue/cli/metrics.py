"""``cronqueue metrics``: the Prometheus text exposition of the database's metrics
(``cronqueue/metrics.py``), on stdout or, for node_exporter's textfile collector, into a file
replaced atomically (``--output``)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from pathlib import Path

from cronqueue.cli.args import AddCommand, env_option
from cronqueue.config import Config
from cronqueue.errors import ConfigError, CronqueueError


def register(add: AddCommand) -> None:
    p = add("metrics", "print the Prometheus metrics, read from the database now (text "
            "exposition; see README, Metrics)", cmd_metrics)
    env_option(p, "--output", env="CRONQUEUE_METRICS_OUTPUT", metavar="FILE",
               help="write them into FILE instead (for node_exporter's textfile collector: "
                    "a .prom file in its directory), replaced atomically, mode 0644")


def cmd_metrics(args: argparse.Namespace, cfg: Config) -> int:
    from cronqueue.metrics import exposition
    from cronqueue.store.engine import make_engine
    from cronqueue.store.migrate import require_current

    output = Path(args.output) if args.output else None
    if output is not None and not output.parent.is_dir():
        raise ConfigError(f"--output {output}: {output.parent} is not a directory")
    engine = make_engine(cfg.db_url)
    try:
        require_current(engine)  # behind or ahead: exit 2 naming the command to run
        text = exposition(engine, entries=[e.name for e in cfg.missions])
    finally:
        engine.dispose()
    if output is None:
        sys.stdout.buffer.write(text)
        sys.stdout.flush()
        return 0
    try:
        write_atomically(output, text)
    except OSError as exc:
        raise CronqueueError(f"--output {output}: {exc.strerror or exc}") from None
    return 0


def write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    """``path`` holds ``data`` or what it held before, never a part: a new file of a random
    name beside it (``O_EXCL``: never an existing file, nor a link planted under that name),
    written, synced, then renamed over ``path`` — a rename replaces a link planted at
    ``path`` itself, never what it points to."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), mode)  # readable by node_exporter whatever our umask
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
