from camstream.ingest.app import main

raise SystemExit(main())
