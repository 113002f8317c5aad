"""Pearson correlation, the one implementation: per row, for every pair, and the unit rows it is made of."""

import numpy as np
import pytest
import torch

from correlation import pearson_matrix, row_pearson, unit_rows


def test_row_pearson_matches_numpy():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(5, 1, 40, generator=gen)
    b = 0.5 * a + torch.randn(5, 1, 40, generator=gen)
    expected = [np.corrcoef(a[i].flatten().numpy(), b[i].flatten().numpy())[0, 1] for i in range(5)]
    np.testing.assert_allclose(row_pearson(a, b).numpy(), expected, rtol=1e-5)
    constant = row_pearson(torch.ones(2, 10), torch.randn(2, 10))
    assert torch.equal(constant, torch.zeros(2))
    with pytest.raises(ValueError, match="same shape"):
        row_pearson(a, b[:, :, :10])


def test_pearson_matrix_matches_numpy_and_the_rows():
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, 3, 5, generator=gen).double(), torch.randn(6, 3, 5, generator=gen).double()
    expected = np.corrcoef(a.flatten(1).numpy(), b.flatten(1).numpy())[:4, 4:]
    np.testing.assert_allclose(pearson_matrix(a, b).numpy(), expected, rtol=1e-12)
    torch.testing.assert_close(pearson_matrix(a, b[:4]).diagonal(), row_pearson(a, b[:4], eps=0.0))


def test_unit_rows_keep_float64_and_flag_constant_rows():
    x = torch.tensor([[1.0, 2.0, 3.0], [2.0, 2.0, 2.0]], dtype=torch.float64)
    rows = unit_rows(x)
    assert rows.dtype == torch.float64 and torch.allclose(rows[0].norm(), torch.tensor(1.0, dtype=torch.float64))
    assert rows[1].isnan().all() and torch.equal(unit_rows(x, eps=1e-12)[1], torch.zeros(3, dtype=torch.float64))
    assert unit_rows(torch.ones(2, 3, dtype=torch.bfloat16), eps=1e-8).dtype == torch.float32
