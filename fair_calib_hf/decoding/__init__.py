"""Diffusion decoding engine: samplers that record commit trajectories, and Monte-Carlo likelihood."""
from .likelihood import mc_log_likelihood
from .samplers import POLICIES, DecodeConfig, DecodeResult, diffusion_generate, left_pad
from .trajectory import Trajectory, position_stats

__all__ = ["DecodeConfig", "DecodeResult", "POLICIES", "Trajectory", "diffusion_generate", "left_pad",
           "mc_log_likelihood", "position_stats"]
