-- cronqueue migration 3 (0003_rollup) for sqlite; exported by `cronqueue migrate --export`.
-- Run on a database at version 2. The last statement records it in cronqueue_migrations,
-- which cronqueue reads before it runs anything.

CREATE TABLE IF NOT EXISTS cronqueue_migrations (
	version INTEGER NOT NULL, 
	name VARCHAR(255) NOT NULL, 
	checksum VARCHAR(64) NOT NULL, 
	applied_at DATETIME DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')) NOT NULL, 
	applied_by VARCHAR(255) DEFAULT '' NOT NULL, 
	statements_done INTEGER DEFAULT 0 NOT NULL, 
	complete SMALLINT DEFAULT 0 NOT NULL, 
	PRIMARY KEY (version)
);

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

INSERT INTO cronqueue_migrations (version, name, checksum, applied_by, statements_done, complete) VALUES (3, '0003_rollup', 'e5dc805f5877c17b03946867a36bb60c4838f31f9ed56992c08219bb1b829f68', 'export', 1, 1);
