"""``python -m fal_edit_async``: the ``fal-edit`` command line."""

import sys

from ._cli import main

sys.exit(main())
