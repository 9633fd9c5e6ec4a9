from camstream.cli import main

raise SystemExit(main())
