from genattn.app.cli import main

raise SystemExit(main())
