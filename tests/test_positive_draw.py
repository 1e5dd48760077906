"""How a sample's positives are drawn: FLAME's stored rows uniformly or column by column, and column weights."""

import numpy as np
import pytest

from flameclip.config import load_config
from flameclip.data.images import CaptionTokens, DataError, StoreText


class FakeStore:
    """The demo's layout: raw (1 row), short (3 rows), long (7 rows); each row holds its own index."""

    columns = {"raw": (0, 1), "short": (1, 4), "long": (4, 11)}

    def get(self, sid):
        return np.arange(11, dtype=np.float32)[:, None].repeat(4, 1)


def column_shares(draw: str, samples: int = 4000, weights=None) -> np.ndarray:
    text = StoreText(FakeStore(), positives=6, draw=draw, weights=weights)
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


def test_column_weights_set_each_columns_share_of_the_positives():
    np.testing.assert_allclose(column_shares("columns", weights=[1, 2, 1]), [1 / 4, 1 / 2, 1 / 4], atol=0.015)
    shares = column_shares("columns", weights=[0, 1, 0])
    assert shares[1] == 1.0  # a zero weight: that column never gives a positive


def test_column_weights_set_which_caption_clip_reads(tmp_path):
    path = tmp_path / "captions.jsonl"
    path.write_text('{"id": "a", "raw": "r", "short": "s", "long": "l"}\n'
                    '{"id": "b", "raw": "r", "short": "", "long": "l"}\n', encoding="utf-8")
    text = CaptionTokens(str(path), ["raw", "short", "long"], tokenizer=list, weights=[1, 3, 0])
    rng = np.random.default_rng(0)
    picks = [text("a", rng)[0] for _ in range(4000)]
    assert picks.count("l") == 0
    assert abs(picks.count("s") / len(picks) - 0.75) < 0.03
    # Scene b has no short caption: its weight goes to the columns it has, never to an empty caption.
    assert {text("b", rng)[0] for _ in range(200)} == {"r"}


def test_bad_column_weights_name_the_setting(tmp_path):
    with pytest.raises(ValueError, match="'column_weights'"):
        load_config(None, ["column_weights=[1.0, -1.0, 1.0]"])
    with pytest.raises(DataError, match="'column_weights' has 2 weight.*3 text column"):
        StoreText(FakeStore(), positives=6, draw="columns", weights=[1, 1])
    with pytest.raises(DataError, match="'column_weights' needs positive_draw"):
        StoreText(FakeStore(), positives=6, draw="rows", weights=[1, 1, 1])
