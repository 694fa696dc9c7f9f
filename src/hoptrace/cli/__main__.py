"""``python -m hoptrace.cli``: the ``hoptrace`` command."""

from . import main

main()
