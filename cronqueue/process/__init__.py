"""Running task scripts as processes: the runner, the child handle, output capture, the
watchdog, process identity and the files a task may touch (script, log_dir)."""
