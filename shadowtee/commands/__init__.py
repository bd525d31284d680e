"""One module per ``shadowtee`` subcommand: ``NAME``, ``HELP``, ``add_arguments``, ``run``."""
