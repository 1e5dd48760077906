"""python -m flameclip.data.demo ROOT [--scale cpu|gpu] [--seed N]: build the demo data."""

from .build import main

raise SystemExit(main())
