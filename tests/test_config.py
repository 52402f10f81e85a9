"""FairCalibConfig: validation, JSON round trip, registration."""
import copy
import importlib
import json

import pytest
import torch

import fair_calib_hf
from fair_calib_hf import FairCalibConfig, FairCalibHfQuantizer
from fair_calib_hf.config import FORMAT_VERSION, field_names


def test_defaults_and_json_round_trip():
    cfg = FairCalibConfig(method="rtn", calibration_dataset=["some text"], modules_to_not_convert=["a.b"])
    d = cfg.to_dict()
    json.dumps(d)  # JSON-clean
    assert d["quant_method"] == "fair_calib" and d["format_version"] == FORMAT_VERSION
    assert d["w_bits"] == 4 and d["a_bits"] == 4 and d["method"] == "rtn"
    assert "calibration_dataset" not in d and "tokenizer" not in d  # runtime data never serialized
    again = FairCalibConfig.from_dict(json.loads(json.dumps(d)))
    assert again.to_dict() == d


def test_unknown_fields_are_refused_with_the_closest_name():
    with pytest.raises(ValueError, match=r"unknown field 'epcohs' \(did you mean 'epochs'\?\)"):
        FairCalibConfig(method="rtn", epcohs=3)
    with pytest.raises(ValueError, match=r"unknown field 'foo'; valid fields: .*epochs"):
        FairCalibConfig(foo=1)
    # transformers' reload path (from_dict = cls(**d)): a key this release does not know is refused, saying why
    d = FairCalibConfig().to_dict()
    d["future_option"] = {"x": 1}
    with pytest.raises(ValueError, match="unknown field 'future_option'.*newer fair_calib_hf"):
        FairCalibConfig.from_dict(d)
    cfg = FairCalibConfig(method="fair_calib", epochs=3)
    assert set(cfg.to_dict()) <= set(field_names()) and cfg.to_dict()["epochs"] == 3


# The quantization_config of the first checkpoints this project wrote (format 1, before the Stage I/II and
# dataset fields existed): every key ever written must still reload.
OLDEST_SAVED = {"quant_method": "fair_calib", "format_version": 1, "pack_format": "int4_s_u8_lo_even_k",
                "method": "rtn", "w_bits": 4, "a_bits": 4, "w_clip_ratio": 1.0, "a_clip_ratio": 1.0,
                "num_samples": 128, "seq_len": 1024, "dataset_text_column": "text", "block_inputs": "fp",
                "calibration_device": None, "modules_to_not_convert": None, "seed": 0}


def test_oldest_saved_config_reloads():
    from fair_calib_hf.packing import PACK_FORMAT

    assert OLDEST_SAVED["pack_format"] == PACK_FORMAT
    cfg = FairCalibConfig.from_dict(dict(OLDEST_SAVED))
    assert cfg.method == "rtn" and cfg.epochs == 15


def test_string_dataset_is_kept_as_record():
    assert FairCalibConfig(calibration_dataset="data/calib.jsonl").to_dict()["calibration_dataset"] == "data/calib.jsonl"


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"w_bits": 8}, "w_bits"),
        ({"a_bits": 3}, "a_bits"),
        ({"w_bits": True}, "w_bits"),
        ({"method": "awq"}, "method"),
        ({"a_bits": 16, "method": "flatquant"}, "method"),
        ({"a_bits": 16, "group_size": 100}, "group_size"),
        ({"group_size": 128}, "group_size"),  # W4A4 kernels take per-channel scales only
        ({"w_bits": 8, "a_bits": 16, "group_size": 128}, "group_size"),
        ({"a_bits": 16, "group_size": True}, "group_size"),
        ({"weight_rounding": "awq"}, "weight_rounding"),
        ({"method": "gptq", "weight_rounding": "rtn"}, "weight_rounding"),
        ({"method": "flatquant", "gptq_position_weights": "prior"}, "gptq_position_weights"),
        ({"gptq_damp": 0}, "gptq_damp"),
        ({"gptq_block_size": 0}, "gptq_block_size"),
        ({"gptq_act_order": "yes"}, "gptq_act_order"),
        ({"num_samples": -1}, "num_samples"),
        ({"num_samples": 0}, "num_samples"),
        ({"seq_len": 0}, "seq_len"),
        ({"seed": -3}, "seed"),
        ({"calibration_dataset": []}, "calibration_dataset"),
        ({"calibration_dataset": ""}, "calibration_dataset"),
        ({"calibration_dataset": 5}, "calibration_dataset"),
        ({"w_clip_ratio": 0}, "w_clip_ratio"),
        ({"a_clip_ratio": 1.5}, "a_clip_ratio"),
        ({"block_inputs": "teacher"}, "block_inputs"),
        ({"modules_to_not_convert": [""]}, "modules_to_not_convert"),
        ({"format_version": FORMAT_VERSION + 1}, "format_version"),
        ({"pack_format": "int4_offset_binary"}, "pack_format"),
        ({"dataset_text_column": ""}, "dataset_text_column"),
    ],
)
def test_validation_names_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        FairCalibConfig(**kwargs)


def test_unknown_method_lists_allowed():
    with pytest.raises(ValueError, match="rtn, gptq, quarot, flatquant, fair_calib"):
        FairCalibConfig(method="awq")


@pytest.mark.parametrize("method", ["flatquant", "fair_calib"])
def test_stage2_methods_need_data(method):
    quantizer = FairCalibHfQuantizer(FairCalibConfig(method=method), pre_quantized=False)
    with pytest.raises(ValueError, match="needs calibration_dataset"):
        quantizer.validate_environment()


def test_unimplemented_method_refuses_to_run(monkeypatch):
    """A method the config accepts but the release cannot calibrate raises, with no silent fallback."""
    import fair_calib_hf.calibration as calibration

    monkeypatch.setattr(calibration, "IMPLEMENTED_METHODS", ("rtn",))
    with pytest.raises(NotImplementedError, match="not implemented yet"):
        calibration.check_method_implemented("quarot")


@pytest.mark.parametrize(
    "kwargs,field",
    [({"n_probe": 0}, "n_probe"), ({"prior_schedule": "middle"}, "prior_schedule"),
     ({"prior_terms": "all"}, "prior_terms"), ({"prior_reliability": "logit"}, "prior_reliability"),
     ({"epochs": -1}, "epochs"), ({"lr": 0}, "lr"), ({"diag_alpha": 2}, "diag_alpha"), ({"lwc": 1}, "lwc"),
     ({"probe_block_length": 0}, "probe_block_length"), ({"prior_path": ""}, "prior_path")],
)
def test_stage_options_validated(kwargs, field):
    with pytest.raises(ValueError, match=field):
        FairCalibConfig(**kwargs)


def test_deepcopy_shares_runtime_objects():
    data = ["a", "b"]
    cfg = FairCalibConfig(calibration_dataset=data)
    clone = copy.deepcopy(cfg)
    assert clone.calibration_dataset is data and clone.to_dict() == cfg.to_dict()


def test_registration_is_idempotent():
    from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING
    import fair_calib_hf.quantizer as q

    importlib.reload(fair_calib_hf)  # re-runs the package's registration
    q.register()
    q.register()
    assert AUTO_QUANTIZATION_CONFIG_MAPPING["fair_calib"] is FairCalibConfig
    assert AUTO_QUANTIZER_MAPPING["fair_calib"] is FairCalibHfQuantizer


def test_registration_refuses_a_foreign_entry(monkeypatch):
    from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING
    import fair_calib_hf.quantizer as q

    class Other:  # from another module
        pass

    monkeypatch.setitem(AUTO_QUANTIZER_MAPPING, "fair_calib", Other)
    with pytest.raises(RuntimeError, match="already registered"):
        q.register()


def test_invalid_precision_lists_every_valid_combination():
    with pytest.raises(ValueError) as err:
        FairCalibConfig(w_bits=3, a_bits=16)
    for text in ("W4A4", "W4A8", "W8A8", "W4A16", "W8A16", "g128", "rtn, gptq"):
        assert text in str(err.value)


@pytest.mark.parametrize("kwargs,field", [
    ({"w_bits": 8, "a_bits": 4}, "w_bits/a_bits"),  # no W8A4
    ({"w_bits": 4, "a_bits": 8, "group_size": 128}, "group_size"),  # groups are weight-only
    ({"w_bits": 8, "a_bits": 8, "group_size": 64}, "group_size"),
    ({"w_bits": 4, "a_bits": 6}, "w_bits/a_bits"),
])
def test_invalid_8bit_activation_combinations_are_refused_at_config_time(kwargs, field):
    with pytest.raises(ValueError, match=field) as err:
        FairCalibConfig(**kwargs)
    assert "W4A8" in str(err.value) or "per-channel" in str(err.value)


@pytest.mark.parametrize("bits", [(4, 8), (8, 8)])
@pytest.mark.parametrize("method", ["rtn", "gptq", "quarot", "flatquant", "fair_calib"])
def test_every_method_accepts_8bit_activations(bits, method):
    cfg = FairCalibConfig(method=method, w_bits=bits[0], a_bits=bits[1])
    assert (cfg.precision.w_bits, cfg.precision.a_bits) == bits and not cfg.precision.weight_only
    again = FairCalibConfig.from_dict(cfg.to_dict())
    assert (again.w_bits, again.a_bits) == bits


def test_weight_rounding_defaults_follow_the_method():
    assert FairCalibConfig(method="gptq").weight_rounding == "gptq"
    assert FairCalibConfig(method="flatquant").weight_rounding == "rtn"
    assert FairCalibConfig(method="fair_calib", weight_rounding="gptq").gptq_position_weights == "prior"
    assert FairCalibConfig(method="gptq").gptq_position_weights == "uniform"
    assert FairCalibConfig(method="gptq", gptq_position_weights="prior").uses_prior
    assert not FairCalibConfig(method="gptq").uses_prior
    assert FairCalibConfig(method="quarot", weight_rounding="gptq").requires_calibration_data
    assert not FairCalibConfig(method="quarot").requires_calibration_data


def test_an_old_w4a4_config_without_the_new_fields_reloads_unchanged():
    old = FairCalibConfig(method="flatquant").to_dict()
    for key in ("group_size", "weight_rounding", "gptq_position_weights", "gptq_damp", "gptq_block_size",
                "gptq_act_order"):
        old.pop(key)
    cfg = FairCalibConfig.from_dict(old)
    assert (cfg.w_bits, cfg.a_bits, cfg.group_size, cfg.weight_rounding) == (4, 4, None, "rtn")
