-- Version 6: ix_queue_due on queue (status, queue, run_at): each queue's oldest due task in one
-- seek (the dashboard's overview, the metrics' cronqueue_oldest_due_age_seconds, the backlog
-- alert), where every pending row was read. Built online by InnoDB (shards go on meanwhile).

CREATE INDEX ix_queue_due ON queue (status, queue, run_at);
