"""`python -m specops ...`: the same command line as `specops ...` (specops/cli.py)."""
import sys

from .cli import main

sys.exit(main())
