"""`python -m tlearn` (also what `torchrun -m tlearn` runs)."""

from tlearn.cli import run

run()
