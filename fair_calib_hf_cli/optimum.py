"""``optimum-cli fair-calib ...``: the ``fair-calib`` subcommands as optimum CLI commands.

``optimum/commands/register/register_fair_calib.py`` (shipped with this package in optimum's namespace)
lists :class:`FairCalibCommand` in ``REGISTER_COMMANDS``; ``optimum-cli`` imports it at every start-up (also
for its own commands), so this module imports neither torch nor :mod:`fair_calib_hf`. The arguments and the
work are those of ``fair-calib`` (:mod:`fair_calib_hf_cli`), so both front ends behave identically (one-line
errors, the same exit statuses).
"""
from __future__ import annotations

import sys

from optimum.commands.base import BaseOptimumCLICommand, CommandInfo

from . import COMMANDS, run_command


def _subcommand(name: str):
    add_args, help_text = COMMANDS[name]

    class _Command(BaseOptimumCLICommand):
        @staticmethod
        def parse_args(parser):
            add_args(parser)

        def run(self):
            code = run_command(name, self.args)
            if code:
                sys.exit(code)

    _Command.__name__ = _Command.__qualname__ = f"FairCalib{name.capitalize()}Command"
    return _Command, CommandInfo(name=name, help=help_text, subcommand_class=_Command)


_SUBCOMMANDS = {name: _subcommand(name) for name in COMMANDS}
FairCalibQuantizeCommand = _SUBCOMMANDS["quantize"][0]
FairCalibProbeCommand = _SUBCOMMANDS["probe"][0]
FairCalibEvalCommand = _SUBCOMMANDS["eval"][0]
FairCalibInspectCommand = _SUBCOMMANDS["inspect"][0]


class FairCalibCommand(BaseOptimumCLICommand):
    """``optimum-cli fair-calib``: prints its help; the work is in the subcommands."""

    COMMAND = CommandInfo(name="fair-calib", help="FAIR-Calib quantization of diffusion LMs (LLaDA, Dream)")
    SUBCOMMANDS = tuple(info for _, info in _SUBCOMMANDS.values())
