"""``optimum-cli fair-calib``: kept as an import path; the commands live in :mod:`fair_calib_hf_cli.optimum`
(importable without torch, because optimum imports its command plugins at every start-up)."""
from fair_calib_hf_cli.optimum import (  # noqa: F401
    FairCalibCommand, FairCalibEvalCommand, FairCalibInspectCommand, FairCalibProbeCommand, FairCalibQuantizeCommand,
)
