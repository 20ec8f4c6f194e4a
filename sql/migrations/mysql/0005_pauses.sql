-- cronqueue migration 5 (0005_pauses) for mysql; exported by `cronqueue migrate --export`.
-- Run on a database at version 4. The last statement records it in cronqueue_migrations,
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

INSERT INTO cronqueue_migrations (version, name, checksum, applied_by, statements_done, complete) VALUES (5, '0005_pauses', 'a97a013eb92fe3d9aec79374da86eda41bdd40023a9246fd885b31c17aaa5e49', 'export', 2, 1);
