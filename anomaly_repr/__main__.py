from anomaly_repr.cli import main

raise SystemExit(main())
