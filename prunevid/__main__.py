"""``python -m prunevid``: the ``prunevid`` command (also what ``accelerate launch -m prunevid`` runs)."""

import sys

from prunevid.cli import main

sys.exit(main())
