"""Serve a DreamLLM artifact with Ray Serve: a web page (prompt, images, answer) on 127.0.0.1.

    python pipelines/serve.py --model ARTIFACT --port 8000
"""

import sys

from dreamray.serving.cli import serve_main

if __name__ == "__main__":
    sys.exit(serve_main(sys.argv[1:]))
