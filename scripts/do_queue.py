#!/usr/bin/env python3
"""do_queue: one shard of the queue. Same as ``cronqueue work ...``; see ``--help``."""

import sys

from cronqueue.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["work", *sys.argv[1:]]))
