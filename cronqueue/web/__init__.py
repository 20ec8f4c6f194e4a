"""The dashboard (``cronqueue web``, extra ``cronqueue[web]``): server-rendered pages over the
database — overview, tasks, failed, delayed, schedule, workers — and the operator's actions.

``create_app(config, auth=...)`` (``cronqueue.web.app``) is the WSGI application, for
``cronqueue web`` (waitress) or a host application that mounts it under its own login: see
``docs/web.md``. Flask is imported only by the modules that serve pages.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "create_app":  # ``from cronqueue.web import create_app``, Flask loaded then
        from cronqueue.web.app import create_app

        return create_app
    raise AttributeError(name)
