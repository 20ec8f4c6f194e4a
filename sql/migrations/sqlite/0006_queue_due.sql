-- cronqueue migration 6 (0006_queue_due) for sqlite; exported by `cronqueue migrate --export`.
-- Run on a database at version 5. The last statement records it in cronqueue_migrations,
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

CREATE INDEX IF NOT EXISTS ix_queue_due ON queue (status, queue, run_at);

INSERT INTO cronqueue_migrations (version, name, checksum, applied_by, statements_done, complete) VALUES (6, '0006_queue_due', '3f45e76f828ef20adfd7c877bba27d8ac108cabc18b6e3e88b9839d98c77f007', 'export', 1, 1);
