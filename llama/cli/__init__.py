"""The ``llama`` command line: :mod:`~llama.cli.main` builds the parser and dispatches, and each
subcommand has a module of its own with an ``add`` function that declares its flags and a ``run``
function that calls the library."""
