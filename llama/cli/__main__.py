"""``python -m llama.cli``: the same as the ``llama`` command."""

from llama.cli.main import main

raise SystemExit(main())
