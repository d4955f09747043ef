"""``python -m qformat``: the same command line as the ``qformat`` script."""
from .cli import run

run()
