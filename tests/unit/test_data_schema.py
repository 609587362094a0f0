"""The unified schema constant and the row invariants."""

from __future__ import annotations

import pyarrow as pa
import pytest

from dreamray.data import schema
from dreamray.data.convert.base import conversation_row, pair_row


def test_schema_columns_and_types():
    assert schema.COLUMNS == ("id", "source", "kind", "texts", "roles", "instruction", "images",
                              "image_after", "image_sim")
    assert schema.UNIFIED_SCHEMA.field("images").type == pa.list_(pa.binary())
    assert schema.UNIFIED_SCHEMA.field("image_after").type == pa.list_(pa.int32())
    assert schema.UNIFIED_SCHEMA.field("image_sim").type == pa.list_(pa.float32())
    assert schema.UNIFIED_SCHEMA.field("instruction").nullable


def test_rows_round_trip_through_arrow():
    rows = [pair_row("s/f/0", "s", "a cat.", b"\xff\xd8", 0.3),
            conversation_row("s/f/1", "s", ["<image>\nq?", "a."], ["user", "assistant"],
                             [b"img"], [0])]
    for row in rows:
        schema.check_row(row)
    back = schema.rows_to_table(rows).to_pylist()
    assert back[0]["images"] == [b"\xff\xd8"] and back[1]["roles"] == ["user", "assistant"]
    assert back[0]["image_sim"] == [pytest.approx(0.3)] and back[1]["image_sim"] is None


@pytest.mark.parametrize(
    "change",
    [{"kind": "video"}, {"image_after": [0, 0]}, {"image_after": [3]}, {"roles": ["user"]},
     {"texts": ["a", "b"], "image_after": [1]}, {"image_sim": [0.1, 0.2]}],
)
def test_check_row_rejects_broken_invariants(change):
    with pytest.raises(ValueError):
        schema.check_row({**pair_row("i", "s", "c", b"x", None), **change})


def test_make_id_is_stable():
    assert schema.make_id("laion400m", "00001", "000010003") == "laion400m/00001/000010003"
