"""`python -m service`: the `manylabel` command, for environments without the console script."""

import sys

from service.cli import main

sys.exit(main())
