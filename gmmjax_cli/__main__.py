from gmmjax_cli import main

raise SystemExit(main())
