from gmmjax._cli import main

raise SystemExit(main())
