"""``python -m pushd``: the same as the ``pushd`` command (handy where bash's builtin wins)."""

import sys

from pushd.cli import main

sys.exit(main())
