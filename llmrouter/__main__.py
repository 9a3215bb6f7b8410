from llmrouter.cli import main

raise SystemExit(main())
