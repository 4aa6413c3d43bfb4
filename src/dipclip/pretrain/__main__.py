"""``python -m dipclip.pretrain``: the same one-line errors as ``dipclip pretrain`` (exit 2, no traceback)."""

import os
import sys
import traceback

from ..errors import DipclipError
from . import main

try:
    sys.exit(main())
except DipclipError as exc:
    if "--debug" in sys.argv or os.environ.get("DIPCLIP_DEBUG", "").strip().lower() not in ("", "0", "false", "no"):
        traceback.print_exc()
    print(f"dipclip: error: {exc}", file=sys.stderr)
    sys.exit(2)
