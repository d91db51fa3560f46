"""``python -m attngen`` is the ``attngen`` command (for running from a source tree)."""

from .cli import main

main()
