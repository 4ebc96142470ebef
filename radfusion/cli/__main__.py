"""``python -m radfusion.cli``: the same entry point as the ``radfusion`` command."""

from radfusion.cli import main

main()
