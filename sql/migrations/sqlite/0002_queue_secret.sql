-- cronqueue migration 2 (0002_queue_secret) for sqlite; exported by `cronqueue migrate --export`.
-- Run on a database at version 1. The last statement records it in cronqueue_migrations,
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

ALTER TABLE queue ADD COLUMN secret TEXT;

INSERT INTO cronqueue_migrations (version, name, checksum, applied_by, statements_done, complete) VALUES (2, '0002_queue_secret', '8686ef99d3d11e3ec21fa9eefb6740bd29146749e07fb9592e952613e7725e9d', 'export', 1, 1);
