"""`medseg` command line: one module per command group, each a thin layer over the Python API (`medseg`).

`medseg.cli.app` holds the root group and registers the groups; heavy libraries (torch, MONAI) are imported
only inside the commands that need them.
"""

from medseg.cli.app import main

__all__ = ["main"]
