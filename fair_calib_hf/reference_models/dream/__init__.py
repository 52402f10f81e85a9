"""Dream-style reference model; ``configuration_dream.py``, ``modeling_dream.py`` and ``generation_utils.py``
are remote code, copied next to the weights by :func:`fair_calib_hf.reference_models.save_tiny`."""
