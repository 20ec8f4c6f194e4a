"""cron_mission (``cronqueue mission``): the tick, the schedule and the rescue of dead shards'
tasks."""
