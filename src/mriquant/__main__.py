"""``python -m mriquant`` runs the command line."""

import sys

from mriquant.cli import main

sys.exit(main())
