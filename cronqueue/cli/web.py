"""``cronqueue web``: the dashboard, served by waitress (extra ``cronqueue[web]``); and the
helpers that make the ``[web]`` config's hashes (``--hash-password``, ``--new-token``)."""

from __future__ import annotations

import argparse
import getpass
import logging
import sys
from typing import TYPE_CHECKING

from cronqueue.cli.args import AddCommand, env_option, upto
from cronqueue.config import Config
from cronqueue.config.web import bind_refusal, check_password_text, hash_password, new_token
from cronqueue.errors import ConfigError, DatabaseError

if TYPE_CHECKING:
    from sqlalchemy import Engine

log = logging.getLogger("cronqueue.web")
DEFAULT_PORT = 8321


def register(add: AddCommand) -> None:
    p = add("web", "the dashboard: tasks, failed, delayed, schedule, workers, and the "
            "operator's actions (needs the extra: pip install 'cronqueue[web]')", cmd_web)
    env_option(p, "--host", env="CRONQUEUE_WEB_HOST", default="127.0.0.1",
               help="address to listen on (default 127.0.0.1; any other needs a [[web.user]] "
                    "or [[web.token]] in the config)")
    env_option(p, "--port", env="CRONQUEUE_WEB_PORT", type=upto(65535), default=DEFAULT_PORT,
               help=f"port (default {DEFAULT_PORT})")
    env_option(p, "--threads", env="CRONQUEUE_WEB_THREADS", type=upto(64), default=4,
               help="requests served at once (default 4)")
    once = p.add_mutually_exclusive_group()
    once.add_argument("--hash-password", action="store_true",
                      help="read a password on stdin, print its password_hash for "
                           "[[web.user]], and exit")
    once.add_argument("--new-token", action="store_true",
                      help="print a new random token and its token_hash for [[web.token]], "
                           "and exit")


def cmd_web(args: argparse.Namespace, cfg: Config) -> int:
    if args.hash_password:
        print(hash_password(_read_password()))
        return 0
    if args.new_token:
        token, stored = new_token()
        print(f"token (give it to the client, keep it secret): {token}")
        print(f'token_hash = "{stored}"')
        return 0
    refusal = bind_refusal(args.host, cfg.web)
    if refusal is not None:
        raise ConfigError(refusal)
    try:
        import waitress

        from cronqueue.web.app import create_app
    except ImportError as exc:
        raise ConfigError(f"cronqueue web needs the web extra ({exc.name} is missing): "
                          "pip install 'cronqueue[web]'") from None
    if args.log_level is None:  # the actions and logins, one line each
        log.setLevel(logging.INFO)
    app = create_app(cfg)
    _check_schema(app.extensions["cronqueue"].queue.engine)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    users = "no users configured: open to this host only" if not cfg.web.authenticated else \
        f"{len(cfg.web.users)} user(s), {len(cfg.web.tokens)} token(s)"
    log.info("serving the dashboard on http://%s:%d/ (database %s; %s)", shown, args.port,
             cfg.safe_db_url, users)
    waitress.serve(app, host=args.host, port=args.port, threads=args.threads, ident="cronqueue",
                   clear_untrusted_proxy_headers=True, _quiet=True)
    return 0


def _check_schema(engine: Engine) -> None:
    """Refuse a database without cronqueue's tables, or behind or ahead of this cronqueue (as
    ``work`` does: exit 2 naming the command to run). One that does not answer now is no
    reason not to start: the overview says so until it answers."""
    from cronqueue.store.migrate import require_current

    try:
        require_current(engine)
    except DatabaseError as exc:
        log.warning("the database does not answer now: %s", exc)


def _read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            raise ConfigError("the passwords differ")
        text = first
    else:
        text = sys.stdin.readline().rstrip("\r\n")
    try:
        check_password_text(text)
    except ValueError as exc:
        raise ConfigError(f"--hash-password: {exc}") from None
    return text
