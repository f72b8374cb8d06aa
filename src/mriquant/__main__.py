"""``python -m mriquant`` runs the command line."""

import sys

from mriquant.cli import main

if __name__ == "__main__":  # a spawned worker process imports this module too: it must not run the command
    sys.exit(main())
