"""`python -m server` is `gloro-serve`."""

import sys

from server.cli import main

sys.exit(main())
