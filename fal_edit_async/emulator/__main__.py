"""``python -m fal_edit_async.emulator``: serve the emulator in the foreground."""

from __future__ import annotations

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
