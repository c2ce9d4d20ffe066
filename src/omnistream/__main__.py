"""`python -m omnistream`: the command line."""

from .cli import main

raise SystemExit(main())
