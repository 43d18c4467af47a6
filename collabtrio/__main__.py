"""``python -m collabtrio`` is the ``collabtrio`` command."""

from .cli import main

raise SystemExit(main())
