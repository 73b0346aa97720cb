"""`python -m cli ...`: `depthid ...` without the installed script."""

import sys

from cli import main

sys.exit(main())
