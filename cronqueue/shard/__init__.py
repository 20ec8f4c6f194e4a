"""The shard (``cronqueue work``, do_queue): claim the due rows of shard i of N and run them,
with its ledger, heartbeat, guard and hand-over."""
