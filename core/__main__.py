"""``python -m simstream``: the same command line as the ``simstream`` script."""

from simstream.cli import main

main()
