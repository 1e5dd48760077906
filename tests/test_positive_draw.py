"""How a FLAME sample's P positives are drawn from its stored rows: uniformly over rows, or column by column."""

import numpy as np
import pytest

from flameclip.config import load_config
from flameclip.data.images import StoreText


class FakeStore:
    """The demo's layout: raw (1 row), short (3 rows), long (7 rows); each row holds its own index."""

    columns = {"raw": (0, 1), "short": (1, 4), "long": (4, 11)}

    def get(self, sid):
        return np.arange(11, dtype=np.float32)[:, None].repeat(4, 1)


def column_shares(draw: str, samples: int = 4000) -> np.ndarray:
    text = StoreText(FakeStore(), positives=6, draw=draw)
    rng = np.random.default_rng(0)
    picks = np.concatenate([text.pick(rng) for _ in range(samples)])
    column = np.searchsorted([1, 4], picks, side="right")  # 0 raw, 1 short, 2 long
    return np.bincount(column, minlength=3) / len(picks)


def test_rows_weigh_columns_by_their_row_count_and_columns_weigh_them_alike():
    # Over rows each of the 11 rows is equally likely: raw 1/11, short 3/11, long 7/11.
    np.testing.assert_allclose(column_shares("rows"), [1 / 11, 3 / 11, 7 / 11], atol=0.01)
    # Column by column each caption column gets a third of the positives.
    np.testing.assert_allclose(column_shares("columns"), [1 / 3, 1 / 3, 1 / 3], atol=0.015)


def test_columns_draw_distinct_rows_within_a_column_when_it_has_enough():
    text = StoreText(FakeStore(), positives=6, draw="columns")
    rng = np.random.default_rng(1)
    for _ in range(500):
        pick = text.pick(rng)
        assert len(pick) == 6
        long_rows = pick[pick >= 4]
        assert len(set(long_rows.tolist())) == len(long_rows)  # 7 long rows: never one twice
    row = text(sid="x", rng=np.random.default_rng(2))
    assert row.shape == (6, 4)


def test_a_typo_in_positive_draw_names_the_setting():
    with pytest.raises(ValueError, match="'positive_draw'"):
        load_config(None, ['positive_draw="column"'])
