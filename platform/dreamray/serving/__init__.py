"""Trying a model: the generation CLI and the Ray Serve app with its web page.

- `dreamray.serving.cli`: ``pipelines/generate.py`` (no Ray) and ``pipelines/serve.py``.
- `dreamray.serving.app`: the Serve deployment (FastAPI ingress) and `start_server`.
- `dreamray.serving.protocol`: request parsing / checking and the JSON answer (no Ray).
- `dreamray.serving.page`: the HTML + JS page.

The generation itself is `dreamray.model.answer`. Importing this package imports nothing else.
"""
