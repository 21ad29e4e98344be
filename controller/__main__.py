"""`python -m controller` is the `conductor` command."""

import sys

from controller.cli import main

sys.exit(main())
