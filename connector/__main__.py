"""``python -m connector`` is the ``tessera`` command."""

import sys

from connector.cli import main

sys.exit(main())
