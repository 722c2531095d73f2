from genattn.cli import main

raise SystemExit(main())
