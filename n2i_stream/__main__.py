"""``python -m n2i_stream`` runs the command line."""

import sys

from .cli import main

sys.exit(main())
