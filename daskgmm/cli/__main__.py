"""``python -m daskgmm.cli``: the ``daskgmm`` command."""

import sys

from daskgmm.cli import main

sys.exit(main())
