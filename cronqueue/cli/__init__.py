"""The ``cronqueue`` command: the parser and commands (``main``), human output, the demo and
``check``."""

from cronqueue.cli.main import main

__all__ = ["main"]
