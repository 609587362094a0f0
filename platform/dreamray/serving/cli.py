"""The "try a model" commands behind ``pipelines/generate.py`` and ``pipelines/serve.py``.

``generate``: one prompt -> ``OUT/answer.md`` + ``OUT/image_k.png`` (no Ray). ``serve``: the
same generation behind a web page on Ray Serve (`dreamray.serving.app`). Bad input (a dir that
is not a DreamLLM artifact, an ``--image`` that is not an image, a prompt longer than the
model's context, options that do not fit the mode) exits with code 2 and one ``error:`` line
naming the flag or file; nothing is written.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from dreamray.model.answer import (
    MODES,
    SCHEDULERS,
    AnswerOptions,
    generate_answer,
    write_answer,
)
from dreamray.model.answer_inputs import AnswerError, check_model_dir, load_model, read_image

BAD_INPUT_EXIT = 2
# AnswerError fields -> the flags that set them (image errors name the file instead)
FLAGS = {
    "model": "--model",
    "prompt": "--prompt",
    "images": "--image",
    "mode": "--mode",
    "max_new_tokens": "--max-new-tokens",
    "max_images": "--max-images",
    "seed": "--seed",
    "steps": "--steps",
    "guidance": "--guidance",
    "scheduler": "--scheduler",
    "image_bias": "--image-bias",
    "temperature": "--temperature",
    "top_k": "--top-k",
    "gpu": "--gpu",
}


def _fail(err: AnswerError) -> int:
    print(f"error: {FLAGS.get(err.field, err.field)}: {err.message}", file=sys.stderr)
    return BAD_INPUT_EXIT


def _option_flags(parser: argparse.ArgumentParser) -> None:
    defaults = AnswerOptions()
    parser.add_argument("--mode", choices=MODES, default=defaults.mode,
                        help="text | image | interleaved; auto: text when --max-images 0, "
                             "image when --max-new-tokens 0, else interleaved")
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    parser.add_argument("--max-images", type=int, default=None,
                        help="interleaved: the most images the model may draw (default 4); "
                             "image: how many (default 1)")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help="image k uses seed + k; sampled tokens use seed")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="denoising steps")
    parser.add_argument("--guidance", type=float, default=defaults.guidance,
                        help="classifier-free guidance scale (1.0: none)")
    parser.add_argument("--scheduler", choices=SCHEDULERS, default=defaults.scheduler)
    parser.add_argument("--negative-prompt", default=None)
    parser.add_argument("--image-bias", type=float, default=defaults.image_bias,
                        help="added to <dream_start>'s logit (interleaved): > 0 draws sooner")
    parser.add_argument("--sample", action="store_true", help="sample tokens (else greedy)")
    parser.add_argument("--temperature", type=float, default=defaults.temperature)
    parser.add_argument("--top-k", type=int, default=None)


def _options(args: argparse.Namespace) -> AnswerOptions:
    return AnswerOptions(
        mode=args.mode, max_new_tokens=args.max_new_tokens, max_images=args.max_images,
        seed=args.seed, steps=args.steps, guidance=args.guidance, scheduler=args.scheduler,
        negative_prompt=args.negative_prompt, image_bias=args.image_bias, do_sample=args.sample,
        temperature=args.temperature, top_k=args.top_k,
    )


def generate_parser() -> argparse.ArgumentParser:
    """``pipelines/generate.py``'s flags."""
    parser = argparse.ArgumentParser(
        prog="pipelines/generate.py",
        description="Answer one prompt with a DreamLLM artifact: OUT/answer.md + image_k.png.",
    )
    parser.add_argument("--model", required=True, type=Path, help="a DreamLLM artifact dir")
    parser.add_argument("--prompt", required=True,
                        help="raw text (no chat template); <image> marks where each --image "
                             "goes (without one, the images go first)")
    parser.add_argument("--image", action="append", default=[], type=Path,
                        help="an input image (repeat for several)")
    parser.add_argument("--out", type=Path, default=Path("answer"), help="output dir")
    parser.add_argument("--device", default=None, help="cuda | cpu (default: cuda if any)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    _option_flags(parser)
    return parser


def generate_main(argv: list[str] | None = None) -> int:
    """Run ``generate``; returns the exit code (2 on bad input)."""
    from transformers.utils import logging as hf_logging

    args = generate_parser().parse_args(argv)
    if args.no_progress:
        hf_logging.disable_progress_bar()  # transformers' weight-loading bar too
    try:
        options = _options(args)
        options.resolved_mode  # noqa: B018 (checks the budgets against the mode)
        images = [read_image(path) for path in args.image]
        model = load_model(args.model, args.device)
        answer = generate_answer(model, args.prompt, images, options,
                                 progress=not args.no_progress,
                                 image_names=[str(p) for p in args.image])
    except AnswerError as err:
        return _fail(err)
    finally:
        if args.no_progress:
            hf_logging.enable_progress_bar()
    path = write_answer(answer, args.out)
    print(f"{answer.mode} answer ({len(answer.images)} images): {path}")
    return 0


def serve_parser() -> argparse.ArgumentParser:
    """``pipelines/serve.py``'s flags."""
    from dreamray.serving.app import DEFAULT_HOST, DEFAULT_PORT

    parser = argparse.ArgumentParser(
        prog="pipelines/serve.py",
        description="Serve a DreamLLM artifact with Ray Serve: a web page to try it.",
    )
    parser.add_argument("--model", required=True, type=Path, help="a DreamLLM artifact dir")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="bind address (default loopback; 0.0.0.0 exposes the page)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--gpu", choices=("auto", "yes", "no"), default="auto",
                        help="give the replica one GPU (auto: when the cluster has one)")
    parser.add_argument("--num-cpus", type=float, default=1, help="the replica's CPUs")
    parser.add_argument("--address", default=None,
                        help="Ray cluster address (default: a running cluster, else a new "
                             "local one; 'local' always starts a new one)")
    return parser


def serve_main(argv: list[str] | None = None) -> int:
    """Run ``serve`` until Ctrl-C / SIGTERM; returns the exit code (2 on bad input)."""
    args = serve_parser().parse_args(argv)
    try:
        check_model_dir(args.model)  # before Ray starts
    except AnswerError as err:
        return _fail(err)
    import ray
    from ray import serve

    from dreamray.serving.app import APP_NAME, start_server

    # SIGTERM stops like Ctrl-C: Serve and the Ray started here are shut down
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    ray.init(address=args.address)
    try:
        url = start_server(args.model, host=args.host, port=args.port, gpu=args.gpu,
                           num_cpus=args.num_cpus, name=APP_NAME)
        print(f"serving {args.model} on {url}  (Ctrl-C stops)", flush=True)
        while True:
            time.sleep(3600)
    except AnswerError as err:
        return _fail(err)
    except KeyboardInterrupt:
        print("stopping", flush=True)
        return 0
    finally:
        # only this app: a cluster that was running before keeps its other Serve apps; a
        # cluster started here goes away with ray.shutdown()
        try:
            serve.delete(APP_NAME)
        except Exception as err:  # noqa: BLE001 (Serve may never have started)
            print(f"note: serve.delete({APP_NAME!r}): {err}", file=sys.stderr)
        ray.shutdown()
