from cronqueue.cli.main import main

raise SystemExit(main())
