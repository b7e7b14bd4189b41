"""`python -m attncollapse ...`: the same command as the `attncollapse` console script."""

import sys

from .cli import main

sys.exit(main())
