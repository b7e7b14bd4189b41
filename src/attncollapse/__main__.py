"""`python -m attncollapse ...`: the same command as the `attncollapse` console script."""

import sys

from .cli import main

if __name__ == "__main__":  # importing the module (doctest's walk over the package) runs nothing
    sys.exit(main())
