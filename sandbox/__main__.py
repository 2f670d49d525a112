"""`python -m sandbox up|down|status|prefect`: see sandbox/cli.py."""

from sandbox.cli import main

raise SystemExit(main())
