"""``fair-calib``: the command line. Its arguments live in :mod:`fair_calib_hf_cli` (importable without torch, so
``--help`` is instant), the work in :mod:`fair_calib_hf.cli.commands`; this module keeps the historical import
path (``from fair_calib_hf.cli import main``) and ``python -m fair_calib_hf.cli``."""
from fair_calib_hf_cli import COMMANDS, PROG, build_parser, entry_point, main, run_command

__all__ = ["COMMANDS", "PROG", "build_parser", "entry_point", "main", "run_command"]
