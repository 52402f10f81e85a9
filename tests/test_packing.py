"""Pack/unpack round trips and the symmetric quantizers."""
import pytest
import torch

from fair_calib_hf.packing import (
    PACK_FORMAT,
    dequantize_weight,
    pack_int4,
    packed_width,
    quantize_symmetric,
    quantize_weight_per_channel,
    symmetric_scale,
    unpack_int4,
)


@pytest.mark.parametrize("k", [1, 2, 7, 64, 131])
def test_pack_unpack_round_trip_random(k):
    g = torch.Generator().manual_seed(k)
    codes = torch.randint(-8, 8, (5, k), generator=g, dtype=torch.int8)
    packed = pack_int4(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (5, packed_width(k))
    assert torch.equal(unpack_int4(packed, k), codes)


def test_pack_byte_order_and_extremes():
    # even index -> low nibble, odd index -> high nibble, two's complement
    codes = torch.tensor([[-8, 7, 7, -8, -1, 0, 1, -1]], dtype=torch.int8)
    packed = pack_int4(codes)
    assert packed.tolist() == [[0x78, 0x87, 0x0F, 0xF1]]
    assert torch.equal(unpack_int4(packed), codes)
    assert PACK_FORMAT == "int4_s_u8_lo_even_k"


def test_odd_k_is_zero_padded():
    packed = pack_int4(torch.tensor([[3, -2, 5]], dtype=torch.int8))
    assert packed.tolist() == [[0xE3, 0x05]]
    assert unpack_int4(packed).tolist() == [[3, -2, 5, 0]]


def test_pack_rejects_out_of_range_and_floats():
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        pack_int4(torch.tensor([8]))
    with pytest.raises(ValueError):
        pack_int4(torch.tensor([-9]))
    with pytest.raises(TypeError):
        pack_int4(torch.tensor([1.0]))
    with pytest.raises(TypeError):
        unpack_int4(torch.tensor([1], dtype=torch.int8))


def test_symmetric_quantizer_definition():
    x = torch.tensor([[0.5, -1.0, 3.5, 7.0], [0.0, 0.0, 0.0, 0.0]])
    scale = symmetric_scale(x.abs().amax(1, keepdim=True))
    assert scale.tolist() == [[1.0], [1.0]]  # zero row -> scale 1
    assert quantize_symmetric(x, scale).tolist() == [[0, -1, 4, 7], [0, 0, 0, 0]]  # half to even: 0.5->0, 3.5->4
    clipped = symmetric_scale(x.abs().amax(1, keepdim=True), 0.5)
    assert quantize_symmetric(x, clipped).tolist()[0] == [1, -2, 7, 7]  # clamp at 7 after clipping


def test_weight_quantization_error_bound():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 40, generator=g)
    packed, scale = quantize_weight_per_channel(w)
    assert scale.shape == (16, 1) and scale.dtype == torch.float32
    wq = dequantize_weight(packed, scale, 40)
    # round to nearest: error at most half a step per element
    assert torch.all((wq - w).abs() <= scale / 2 + 1e-6)
    # the largest magnitude of each row maps to +-7 exactly
    assert torch.allclose(wq.abs().amax(1), w.abs().amax(1))
