-- cronqueue migration 3 (0003_rollup) for mysql; exported by `cronqueue migrate --export`.
-- Run on a database at version 2. The last statement records it in cronqueue_migrations,
-- which cronqueue reads before it runs anything.

CREATE TABLE IF NOT EXISTS cronqueue_migrations (
	version INTEGER NOT NULL, 
	name VARCHAR(255) NOT NULL, 
	checksum VARCHAR(64) NOT NULL, 
	applied_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)), 
	applied_by VARCHAR(255) NOT NULL DEFAULT '', 
	statements_done INTEGER NOT NULL DEFAULT 0, 
	complete SMALLINT NOT NULL DEFAULT 0, 
	PRIMARY KEY (version)
)ENGINE=InnoDB CHARSET=utf8mb4 COLLATE utf8mb4_bin;

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

INSERT INTO cronqueue_migrations (version, name, checksum, applied_by, statements_done, complete) VALUES (3, '0003_rollup', '321e3812833ba29c5affbe722209abf2947364f9b55ddb0681371b46b2a92f6c', 'export', 1, 1);
