"""LLaDA-style reference model; ``configuration_llada.py`` and ``modeling_llada.py`` are remote code, copied
next to the weights by :func:`fair_calib_hf.reference_models.save_tiny`."""
