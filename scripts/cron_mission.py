#!/usr/bin/env python3
"""cron_mission: the crontab entry point. Same as ``cronqueue mission ...``; see ``--help``."""

import sys

from cronqueue.cli import main

if __name__ == "__main__":
    sys.exit(main(["mission", *sys.argv[1:]]))
