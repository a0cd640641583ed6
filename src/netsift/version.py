"""netsift's version: one constant at the bottom of the import graph (the run-folder and file writers record it)."""

__version__ = "0.1.0"
