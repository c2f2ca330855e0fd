"""`python -m tlearn` (also what `torchrun -m tlearn` runs)."""

import sys

from tlearn.cli import main

sys.exit(main())
