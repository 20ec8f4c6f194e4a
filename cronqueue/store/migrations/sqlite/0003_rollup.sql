-- Version 3: cronqueue_rollup, the counters of finished tasks per (queue, outcome) and their
-- run times (the metrics' cronqueue_tasks_finished_total and task duration histogram), added
-- to in the transaction that records each outcome: a purge of queue leaves them as they are.

CREATE TABLE IF NOT EXISTS cronqueue_rollup (
	queue VARCHAR(64) NOT NULL, 
	outcome VARCHAR(16) NOT NULL, 
	finished BIGINT DEFAULT 0 NOT NULL, 
	timed BIGINT DEFAULT 0 NOT NULL, 
	duration_us BIGINT DEFAULT 0 NOT NULL, 
	le_0_01 BIGINT DEFAULT 0 NOT NULL, 
	le_0_05 BIGINT DEFAULT 0 NOT NULL, 
	le_0_1 BIGINT DEFAULT 0 NOT NULL, 
	le_0_25 BIGINT DEFAULT 0 NOT NULL, 
	le_0_5 BIGINT DEFAULT 0 NOT NULL, 
	le_1 BIGINT DEFAULT 0 NOT NULL, 
	le_2_5 BIGINT DEFAULT 0 NOT NULL, 
	le_5 BIGINT DEFAULT 0 NOT NULL, 
	le_10 BIGINT DEFAULT 0 NOT NULL, 
	le_30 BIGINT DEFAULT 0 NOT NULL, 
	le_60 BIGINT DEFAULT 0 NOT NULL, 
	le_120 BIGINT DEFAULT 0 NOT NULL, 
	le_300 BIGINT DEFAULT 0 NOT NULL, 
	le_600 BIGINT DEFAULT 0 NOT NULL, 
	le_1800 BIGINT DEFAULT 0 NOT NULL, 
	le_3600 BIGINT DEFAULT 0 NOT NULL, 
	PRIMARY KEY (queue, outcome)
);
