-- Version 1: cronqueue 0.1.0's schema (the queue table and the mission's cronqueue_runs and
-- cronqueue_workers), as its `init-db` created it. Never edit an applied migration: add one.

CREATE TABLE IF NOT EXISTS cronqueue_runs (
	id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, 
	entry VARCHAR(128) NOT NULL, 
	scheduled_at DATETIME NOT NULL, 
	fired_at DATETIME DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')) NOT NULL, 
	host VARCHAR(255) DEFAULT '' NOT NULL, 
	pid INTEGER, 
	outcome VARCHAR(1000) DEFAULT '' NOT NULL, 
	task_id BIGINT
);

CREATE TABLE IF NOT EXISTS cronqueue_workers (
	id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, 
	host VARCHAR(255) NOT NULL, 
	pid INTEGER NOT NULL, 
	pid_start BIGINT, 
	entry VARCHAR(128), 
	shard INTEGER NOT NULL, 
	total INTEGER NOT NULL, 
	queues VARCHAR(1000) DEFAULT '' NOT NULL, 
	started_at DATETIME DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')) NOT NULL, 
	heartbeat_at DATETIME DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')) NOT NULL, 
	current_task BIGINT, 
	tasks_done INTEGER DEFAULT 0 NOT NULL, 
	stop_requested SMALLINT DEFAULT 0 NOT NULL
);

CREATE TABLE IF NOT EXISTS queue (
	id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, 
	queue VARCHAR(64) DEFAULT 'default' NOT NULL, 
	taskscript VARCHAR(255) NOT NULL, 
	param TEXT NOT NULL, 
	status SMALLINT DEFAULT 0 NOT NULL, 
	priority INTEGER DEFAULT 0 NOT NULL, 
	ctime DATETIME DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')) NOT NULL, 
	run_at DATETIME DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')) NOT NULL, 
	attempts INTEGER DEFAULT 0 NOT NULL, 
	max_attempts INTEGER, 
	timeout INTEGER, 
	unique_key VARCHAR(191), 
	active_key VARCHAR(191), 
	worker_host VARCHAR(255), 
	worker_pid INTEGER, 
	worker_pid_start BIGINT, 
	claim_token VARCHAR(32), 
	lease_until DATETIME, 
	started_at DATETIME, 
	finished_at DATETIME, 
	exit_code INTEGER, 
	error TEXT, 
	output TEXT
);

CREATE UNIQUE INDEX IF NOT EXISTS ux_runs_entry_time ON cronqueue_runs (entry, scheduled_at);

CREATE INDEX IF NOT EXISTS ix_workers_host_pid ON cronqueue_workers (host, pid);

CREATE INDEX IF NOT EXISTS ix_queue_claim ON queue (status, queue, priority DESC, id);

CREATE INDEX IF NOT EXISTS ix_queue_claim_any ON queue (status, priority DESC, id);

CREATE INDEX IF NOT EXISTS ix_queue_finished ON queue (finished_at);

CREATE UNIQUE INDEX IF NOT EXISTS ux_queue_active_key ON queue (active_key);
