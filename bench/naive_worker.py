"""The naive table queue of the drain section, the PHP design ported literally: a plain table
``naive (id, taskscript, param, status, priority, finished_at)``, an autocommit connection, one
row at a time.

    NAIVE_DB='{"backend": "sqlite", "path": "/tmp/q.db"}' NAIVE_TASK_DIR=/tmp/tasks \\
        python bench/naive_worker.py SHARD TOTAL

Loops: SELECT the best pending row with ``id % TOTAL = SHARD``, run ``[script, param]``,
UPDATE its status to 1 (and ``finished_at``, epoch seconds, in the same statement: bench.py's
first-task and steady figures), until none is left. bench.py starts TOTAL of these side by side.
Only the standard library and PyMySQL: no SQLAlchemy, no cronqueue.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from typing import Any


def connect(spec: dict[str, Any]) -> tuple[Any, str, str]:
    """A connection, its placeholder and its modulo operator (pyformat doubles '%')."""
    if spec["backend"] == "sqlite":
        conn = sqlite3.connect(spec["path"], timeout=30, isolation_level=None)
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("PRAGMA synchronous=FULL")  # as cronqueue's own connections
        return conn, "?", "%"
    import ssl

    from pymysql.connections import Connection

    # PyMySQL, given no TLS option, builds ssl.create_default_context() at every connect (the
    # system CA bundle: ~40 ms CPU here, inside the drain's timed window) for a "preferred"
    # mode that never verifies anything. cronqueue's shards build that context once, without
    # the bundle (cronqueue/store/backends/pymysql_tls.py); this worker does the same so the
    # peer pays the same connection cost, not ~40 ms more per worker. Per-row costs are
    # unaffected: TLS, when the server offers it, is negotiated by both alike.
    class SharedTls(Connection):  # type: ignore[misc]
        def _create_ssl_ctx(self, sslp: Any) -> Any:
            if isinstance(sslp, dict) and not sslp:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.verify_flags &= ~ssl.VERIFY_X509_STRICT
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                return ctx
            return super()._create_ssl_ctx(sslp)

    conn = SharedTls(host=spec["host"], port=int(spec["port"]), user=spec["user"],
                     password=spec["password"], database=spec["database"], autocommit=True)
    return conn, "%s", "%%"


def main(argv: list[str]) -> int:
    shard, total = int(argv[0]), int(argv[1])
    task_dir = os.environ["NAIVE_TASK_DIR"]
    conn, mark, mod = connect(json.loads(os.environ["NAIVE_DB"]))
    pick = (f"SELECT id, taskscript, param FROM naive WHERE status = 0 AND id {mod} {mark} = "
            f"{mark} ORDER BY priority DESC, id LIMIT 1")
    done = f"UPDATE naive SET status = 1, finished_at = {mark} WHERE id = {mark}"
    cur = conn.cursor()
    while True:
        cur.execute(pick, (total, shard))
        row = cur.fetchone()
        if row is None:
            break
        task_id, script, param = row
        subprocess.run([os.path.join(task_dir, script), param], check=False)
        cur.execute(done, (time.time(), task_id))
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
