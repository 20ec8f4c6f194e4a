#!/bin/sh
# Example task in shell: fails on its first attempt, succeeds on the retry.
# $1 is the param as JSON text; CRONQUEUE_ATTEMPT counts the runs (1 on the first).
echo "flaky: param=$1 attempt=$CRONQUEUE_ATTEMPT"
if [ "$CRONQUEUE_ATTEMPT" -lt 2 ]; then
    echo "flaky: the remote end is not answering yet" >&2
    exit 75
fi
echo "flaky: done"
