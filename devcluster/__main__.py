"""`python -m devcluster ...`: see devcluster.commands."""

import sys

from devcluster.commands import main

sys.exit(main())
