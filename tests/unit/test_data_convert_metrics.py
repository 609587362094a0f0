"""The conversion summary table and the metrics' no-Ray behaviour."""

from __future__ import annotations

from dreamray.data.convert.metrics import METRIC_PREFIX, format_summary, record_rows, record_run


def test_summary_lists_every_count():
    manifest = {
        "converter": "img2dataset", "source": "laion400m", "rows_in": 10, "rows_out": 7,
        "rows_rejected": {"empty_caption": 1, "status_not_success": 2}, "rows_rejected_total": 3,
        "images_dropped": {}, "files_skipped": [{"path": "x", "error": "e"}], "shards": [{}],
        "seconds": 2.0, "rows_per_second": 5.0,
    }
    text = format_summary(manifest)
    for needle in ("rows read", "10", "status_not_success", "files skipped", "rows/s", "5.0"):
        assert needle in text
    assert METRIC_PREFIX == "dreamray_convert_"


def test_metrics_are_a_no_op_without_ray():
    record_rows("laion400m", 3, 2, {"empty_caption": 1})
    record_run("laion400m", 0, 12.5)
