import numpy as np
import pytest

from neuron_runtime.layers import conv2d, max_pool_3x3_s2, softmax


def _naive_conv(x: np.ndarray, w: np.ndarray, stride: int, pad: int) -> np.ndarray:
    kh, kw, _, cout = w.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0))).astype(np.float64)
    n, h, width, _ = xp.shape
    ho, wo = (h - kh) // stride + 1, (width - kw) // stride + 1
    out = np.zeros((n, ho, wo, cout))
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, i * stride : i * stride + kh, j * stride : j * stride + kw, :]
            out[:, i, j, :] = np.tensordot(patch, w, axes=([1, 2, 3], [0, 1, 2]))
    return out


@pytest.mark.parametrize(
    ("k", "stride", "pad", "size"),
    [(1, 1, 0, 6), (1, 2, 0, 7), (3, 1, 1, 6), (3, 2, 1, 7), (7, 2, 3, 9)],
    ids=["1x1", "1x1-stride2", "3x3", "3x3-stride2", "7x7-stem"],
)
def test_conv2d_matches_naive(k: int, stride: int, pad: int, size: int) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, size, size, 3), dtype=np.float32)
    w = rng.standard_normal((k, k, 3, 5), dtype=np.float32)
    got = conv2d(x, w, stride, pad)
    np.testing.assert_allclose(got, _naive_conv(x, w, stride, pad), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size", [4, 7, 8], ids=["even", "odd", "eight"])
def test_max_pool_matches_naive(size: int) -> None:
    x = np.random.default_rng(2).standard_normal((1, size, size, 2), dtype=np.float32)
    got = max_pool_3x3_s2(x)
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    ho = (size + 2 - 3) // 2 + 1
    expected = np.array(
        [[xp[0, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3, :].max(axis=(0, 1)) for j in range(ho)]
         for i in range(ho)]
    )  # fmt: skip
    np.testing.assert_array_equal(got[0], expected)


def test_softmax_rows_sum_to_one_and_survive_large_logits() -> None:
    out = softmax(np.array([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0]], dtype=np.float32))
    np.testing.assert_allclose(out.sum(axis=1), [1.0, 1.0], rtol=1e-6)
    assert out.dtype == np.float32
    assert out[0, 0] == pytest.approx(1.0)
