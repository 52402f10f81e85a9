"""Registers ``optimum-cli fair-calib ...`` (quantize, probe, eval, inspect).

optimum discovers every module in the ``optimum.commands.register`` namespace package (PEP 420: no
``__init__.py`` anywhere on the way) and registers the commands listed in its ``REGISTER_COMMANDS``.
"""
from fair_calib_hf_cli.optimum import FairCalibCommand

REGISTER_COMMANDS = [FairCalibCommand]
