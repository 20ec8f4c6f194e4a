import gc

gc.disable()  # the start-up's imports, without collections: cli.main.startup_done enables it

from cronqueue.cli.main import main  # noqa: E402

raise SystemExit(main())
