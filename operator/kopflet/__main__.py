from kopflet.cli import main

raise SystemExit(main())
