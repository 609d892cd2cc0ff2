"""`python -m bnexp ...`, as torchrun runs it: torchrun --nproc_per_node=2 -m bnexp train ..."""

import sys

from bnexp.cli import main

sys.exit(main())
