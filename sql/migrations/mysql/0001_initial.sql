-- cronqueue migration 1 (0001_initial) for mysql; exported by `cronqueue migrate --export`.
-- Run on an empty database (or record it by hand on one of cronqueue 0.1.0). The last statement records it in cronqueue_migrations,
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

CREATE TABLE IF NOT EXISTS cronqueue_runs (
	id BIGINT NOT NULL AUTO_INCREMENT, 
	entry VARCHAR(128) NOT NULL, 
	scheduled_at DATETIME(6) NOT NULL, 
	fired_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)), 
	host VARCHAR(255) NOT NULL DEFAULT '', 
	pid INTEGER, 
	outcome VARCHAR(1000) NOT NULL DEFAULT '', 
	task_id BIGINT, 
	PRIMARY KEY (id)
)ENGINE=InnoDB CHARSET=utf8mb4 COLLATE utf8mb4_bin;

CREATE TABLE IF NOT EXISTS cronqueue_workers (
	id BIGINT NOT NULL AUTO_INCREMENT, 
	host VARCHAR(255) NOT NULL, 
	pid INTEGER NOT NULL, 
	pid_start BIGINT, 
	entry VARCHAR(128), 
	shard INTEGER NOT NULL, 
	total INTEGER NOT NULL, 
	queues VARCHAR(1000) NOT NULL DEFAULT '', 
	started_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)), 
	heartbeat_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)), 
	current_task BIGINT, 
	tasks_done INTEGER NOT NULL DEFAULT 0, 
	stop_requested SMALLINT NOT NULL DEFAULT 0, 
	PRIMARY KEY (id)
)ENGINE=InnoDB CHARSET=utf8mb4 COLLATE utf8mb4_bin;

CREATE TABLE IF NOT EXISTS queue (
	id BIGINT NOT NULL AUTO_INCREMENT, 
	queue VARCHAR(64) NOT NULL DEFAULT 'default', 
	taskscript VARCHAR(255) NOT NULL, 
	param MEDIUMTEXT NOT NULL, 
	status SMALLINT NOT NULL DEFAULT 0, 
	priority INTEGER NOT NULL DEFAULT 0, 
	ctime DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)), 
	run_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)), 
	attempts INTEGER NOT NULL DEFAULT 0, 
	max_attempts INTEGER, 
	timeout INTEGER, 
	unique_key VARCHAR(191), 
	active_key VARBINARY(764), 
	worker_host VARCHAR(255), 
	worker_pid INTEGER, 
	worker_pid_start BIGINT, 
	claim_token VARCHAR(32), 
	lease_until DATETIME(6), 
	started_at DATETIME(6), 
	finished_at DATETIME(6), 
	exit_code INTEGER, 
	error TEXT, 
	output TEXT, 
	PRIMARY KEY (id)
)ENGINE=InnoDB CHARSET=utf8mb4 COLLATE utf8mb4_bin;

CREATE UNIQUE INDEX ux_runs_entry_time ON cronqueue_runs (entry, scheduled_at);

CREATE INDEX ix_workers_host_pid ON cronqueue_workers (host, pid);

CREATE INDEX ix_queue_claim ON queue (status, queue, priority DESC, id);

CREATE INDEX ix_queue_claim_any ON queue (status, priority DESC, id);

CREATE INDEX ix_queue_finished ON queue (finished_at);

CREATE UNIQUE INDEX ux_queue_active_key ON queue (active_key);

INSERT INTO cronqueue_migrations (version, name, checksum, applied_by, statements_done, complete) VALUES (1, '0001_initial', '04e8d0a9aa1f33afb13c9fe721cfe1c9278613741b5e478d8b61096a7b553f6e', 'export', 9, 1);
