"""``python -m flameclip.cli`` (and ``torchrun -m flameclip.cli``): the ``flameclip`` command."""

import sys

from . import main

sys.exit(main())
