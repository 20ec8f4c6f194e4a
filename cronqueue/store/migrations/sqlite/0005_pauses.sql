-- Version 5: cronqueue_pauses, the paused queues (shards claim nothing from them) and mission
-- entries (the mission does not fire them): one row per kind and name, with who paused it,
-- why and until when; a resume (or the end of paused_until) ends the pause and keeps the row.

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
