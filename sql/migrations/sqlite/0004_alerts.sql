-- cronqueue migration 4 (0004_alerts) for sqlite; exported by `cronqueue migrate --export`.
-- Run on a database at version 3. The last statement records it in cronqueue_migrations,
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

CREATE TABLE IF NOT EXISTS cronqueue_alerts (
	id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, 
	kind VARCHAR(32) NOT NULL, 
	subject VARCHAR(191) NOT NULL, 
	state VARCHAR(16) DEFAULT 'firing' NOT NULL, 
	changed_at DATETIME DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')) NOT NULL, 
	seq INTEGER DEFAULT 1 NOT NULL, 
	summary VARCHAR(1000) DEFAULT '' NOT NULL, 
	detail TEXT, 
	unsent VARCHAR(64) DEFAULT '' NOT NULL, 
	sent_state VARCHAR(16), 
	sent_at DATETIME, 
	hour_start DATETIME, 
	hour_count INTEGER DEFAULT 0 NOT NULL, 
	claim_token VARCHAR(32), 
	claim_until DATETIME
);

CREATE UNIQUE INDEX IF NOT EXISTS ux_alerts_key ON cronqueue_alerts (kind, subject);

CREATE TABLE IF NOT EXISTS cronqueue_ticks (
	id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, 
	host VARCHAR(255) NOT NULL, 
	pid INTEGER, 
	started_at DATETIME DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')) NOT NULL, 
	finished_at DATETIME DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')) NOT NULL, 
	errors INTEGER DEFAULT 0 NOT NULL, 
	error VARCHAR(1000) DEFAULT '' NOT NULL
);

CREATE UNIQUE INDEX IF NOT EXISTS ux_ticks_host ON cronqueue_ticks (host);

INSERT INTO cronqueue_migrations (version, name, checksum, applied_by, statements_done, complete) VALUES (4, '0004_alerts', 'f53a50431946f3d852385861d30183503698c8a778d3ef477b8f2db1a9830016', 'export', 4, 1);
