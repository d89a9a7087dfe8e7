"""``python -m ipoke``: the ``ipoke`` command, for environments whose scripts folder is not on ``PATH``."""

import sys

from ipoke.cli import main

if __name__ == "__main__":
    sys.exit(main())
