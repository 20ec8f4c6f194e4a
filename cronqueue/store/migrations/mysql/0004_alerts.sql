-- Version 4: cronqueue_alerts, the alerts the mission tick sends (one row per kind and
-- subject: its state, whether that state is sent, the hourly cap), and cronqueue_ticks, each
-- host's last tick (check --health, the dashboard, the metrics).

CREATE TABLE IF NOT EXISTS cronqueue_alerts (
	id BIGINT NOT NULL AUTO_INCREMENT, 
	kind VARCHAR(32) NOT NULL, 
	subject VARBINARY(764) NOT NULL, 
	state VARCHAR(16) NOT NULL DEFAULT 'firing', 
	changed_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)), 
	seq INTEGER NOT NULL DEFAULT 1, 
	summary VARCHAR(1000) NOT NULL DEFAULT '', 
	detail MEDIUMTEXT, 
	unsent VARCHAR(64) NOT NULL DEFAULT '', 
	sent_state VARCHAR(16), 
	sent_at DATETIME(6), 
	hour_start DATETIME(6), 
	hour_count INTEGER NOT NULL DEFAULT 0, 
	claim_token VARCHAR(32), 
	claim_until DATETIME(6), 
	PRIMARY KEY (id)
)ENGINE=InnoDB CHARSET=utf8mb4 COLLATE utf8mb4_bin;

CREATE UNIQUE INDEX ux_alerts_key ON cronqueue_alerts (kind, subject);

CREATE TABLE IF NOT EXISTS cronqueue_ticks (
	id BIGINT NOT NULL AUTO_INCREMENT, 
	host VARCHAR(255) NOT NULL, 
	pid INTEGER, 
	started_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)), 
	finished_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)), 
	errors INTEGER NOT NULL DEFAULT 0, 
	error VARCHAR(1000) NOT NULL DEFAULT '', 
	PRIMARY KEY (id)
)ENGINE=InnoDB CHARSET=utf8mb4 COLLATE utf8mb4_bin;

CREATE UNIQUE INDEX ux_ticks_host ON cronqueue_ticks (host);
