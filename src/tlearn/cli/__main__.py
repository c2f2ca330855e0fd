"""`python -m tlearn.cli`."""

from tlearn.cli import run

run()
