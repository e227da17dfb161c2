"""One module per ``livestream`` sub-command.

Each module has a docstring (its help, with an example), ``add_args(parser)`` and
``main(args) -> int``; :mod:`livestream.cli.main` lists them in ``COMMANDS``.
"""
