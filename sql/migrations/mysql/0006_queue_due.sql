-- cronqueue migration 6 (0006_queue_due) for mysql; exported by `cronqueue migrate --export`.
-- Run on a database at version 5. The last statement records it in cronqueue_migrations,
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

CREATE INDEX ix_queue_due ON queue (status, queue, run_at);

INSERT INTO cronqueue_migrations (version, name, checksum, applied_by, statements_done, complete) VALUES (6, '0006_queue_due', 'c5632f249726a78e7229399b290d6bf7641646aecf686192066ec532529f9664', 'export', 1, 1);
