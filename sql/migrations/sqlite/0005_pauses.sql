-- cronqueue migration 5 (0005_pauses) for sqlite; exported by `cronqueue migrate --export`.
-- Run on a database at version 4. The last statement records it in cronqueue_migrations,
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

CREATE TABLE IF NOT EXISTS cronqueue_pauses (
	id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, 
	kind VARCHAR(16) NOT NULL, 
	name VARCHAR(64) NOT NULL, 
	paused_at DATETIME DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')) NOT NULL, 
	paused_until DATETIME, 
	paused_by VARCHAR(255) DEFAULT '' NOT NULL, 
	reason VARCHAR(1000) DEFAULT '' NOT NULL
);

CREATE UNIQUE INDEX IF NOT EXISTS ux_pauses_kind_name ON cronqueue_pauses (kind, name);

INSERT INTO cronqueue_migrations (version, name, checksum, applied_by, statements_done, complete) VALUES (5, '0005_pauses', '66abaa6d2b87e2a3b6a7a301ef170b2938eabb9d3d883b3257c2de09cff08b03', 'export', 2, 1);
