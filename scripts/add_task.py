#!/usr/bin/env python3
"""add_task: enqueue a task from a shell. Same as ``cronqueue add TASKSCRIPT [PARAM_JSON] ...``."""

import sys

from cronqueue.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["add", *sys.argv[1:]]))
