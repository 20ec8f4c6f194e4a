-- Version 5: cronqueue_pauses, the paused queues (shards claim nothing from them) and mission
-- entries (the mission does not fire them): one row per kind and name, with who paused it,
-- why and until when; a resume (or the end of paused_until) ends the pause and keeps the row.

CREATE TABLE IF NOT EXISTS cronqueue_pauses (
	id BIGINT NOT NULL AUTO_INCREMENT, 
	kind VARCHAR(16) NOT NULL, 
	name VARCHAR(64) NOT NULL, 
	paused_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)), 
	paused_until DATETIME(6), 
	paused_by VARCHAR(255) NOT NULL DEFAULT '', 
	reason VARCHAR(1000) NOT NULL DEFAULT '', 
	PRIMARY KEY (id)
)ENGINE=InnoDB CHARSET=utf8mb4 COLLATE utf8mb4_bin;

CREATE UNIQUE INDEX ux_pauses_kind_name ON cronqueue_pauses (kind, name);
