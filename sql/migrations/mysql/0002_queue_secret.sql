-- cronqueue migration 2 (0002_queue_secret) for mysql; exported by `cronqueue migrate --export`.
-- Run on a database at version 1. The last statement records it in cronqueue_migrations,
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

ALTER TABLE queue ADD COLUMN secret MEDIUMTEXT;

INSERT INTO cronqueue_migrations (version, name, checksum, applied_by, statements_done, complete) VALUES (2, '0002_queue_secret', '4acf319ab0767627d4ab24c0d452e1dcaafa7af2b42b0c630d1b6b50269a748c', 'export', 1, 1);
