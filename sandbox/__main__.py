"""`python -m sandbox up|down|status`: see sandbox/cli.py."""

from sandbox.cli import main

raise SystemExit(main())
