"""Answer one prompt with a DreamLLM artifact: OUT/answer.md with the text and image_k.png files.

    python pipelines/generate.py --model ARTIFACT --prompt "a red bus in the snow" --out answer
"""

import sys

from dreamray.serving.cli import generate_main

if __name__ == "__main__":
    sys.exit(generate_main(sys.argv[1:]))
