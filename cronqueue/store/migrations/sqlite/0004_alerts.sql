-- Version 4: cronqueue_alerts, the alerts the mission tick sends (one row per kind and
-- subject: its state, whether that state is sent, the hourly cap), and cronqueue_ticks, each
-- host's last tick (check --health, the dashboard, the metrics).

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
