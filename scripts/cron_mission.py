#!/usr/bin/env python3
"""cron_mission: the crontab entry point. Same as ``cronqueue mission ...``; see ``--help``."""

import sys

from cronqueue.cli.main import main

if __name__ == "__main__":
    sys.argv.insert(1, "mission")  # main() reading sys.argv: a program, which may exit fast
    sys.exit(main())
