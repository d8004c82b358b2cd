"""``python -m graven.node.cli``: the same as the ``graven`` command."""

import sys

from graven.node.cli import main

sys.exit(main())
