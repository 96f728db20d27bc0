"""`python -m medseg` runs the command line."""

from medseg.cli import main

main()
