"""`python -m skyloc ...` and `torchrun ... -m skyloc train ...` run the `skyloc` command."""
import sys

from skyloc.cli import main

if __name__ == "__main__":
    sys.exit(main())
