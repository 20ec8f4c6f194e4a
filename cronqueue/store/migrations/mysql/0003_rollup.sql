-- Version 3: cronqueue_rollup, the counters of finished tasks per (queue, outcome) and their
-- run times (the metrics' cronqueue_tasks_finished_total and task duration histogram), added
-- to in the transaction that records each outcome: a purge of queue leaves them as they are.

CREATE TABLE IF NOT EXISTS cronqueue_rollup (
	queue VARCHAR(64) NOT NULL, 
	outcome VARCHAR(16) NOT NULL, 
	finished BIGINT NOT NULL DEFAULT 0, 
	timed BIGINT NOT NULL DEFAULT 0, 
	duration_us BIGINT NOT NULL DEFAULT 0, 
	le_0_01 BIGINT NOT NULL DEFAULT 0, 
	le_0_05 BIGINT NOT NULL DEFAULT 0, 
	le_0_1 BIGINT NOT NULL DEFAULT 0, 
	le_0_25 BIGINT NOT NULL DEFAULT 0, 
	le_0_5 BIGINT NOT NULL DEFAULT 0, 
	le_1 BIGINT NOT NULL DEFAULT 0, 
	le_2_5 BIGINT NOT NULL DEFAULT 0, 
	le_5 BIGINT NOT NULL DEFAULT 0, 
	le_10 BIGINT NOT NULL DEFAULT 0, 
	le_30 BIGINT NOT NULL DEFAULT 0, 
	le_60 BIGINT NOT NULL DEFAULT 0, 
	le_120 BIGINT NOT NULL DEFAULT 0, 
	le_300 BIGINT NOT NULL DEFAULT 0, 
	le_600 BIGINT NOT NULL DEFAULT 0, 
	le_1800 BIGINT NOT NULL DEFAULT 0, 
	le_3600 BIGINT NOT NULL DEFAULT 0, 
	PRIMARY KEY (queue, outcome)
)ENGINE=InnoDB CHARSET=utf8mb4 COLLATE utf8mb4_bin;
