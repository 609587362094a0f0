"""The Ray Serve app: one replica holding a DreamLLM behind a FastAPI ingress.

Routes: ``GET /`` the page (`dreamray.serving.page`), ``GET /health`` the model and device,
``POST /generate`` an answer (`dreamray.serving.protocol`). Generation runs in a worker thread,
one request at a time (a lock: the model is shared), so the page and health routes answer while
an image is being made. Bad requests get a 4xx with ``{"error", "field"}``; the replica keeps
serving.

`start_server` deploys it as Ray Serve's docs do: ``serve.start(http_options={host, port})``
then ``serve.run(App.bind(...), route_prefix="/")``; the replica asks for one GPU when the
cluster has one (``gpu="auto"``).
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures (a string
# `Request` annotation would make it a query parameter once Serve rewraps the methods).
import threading
import time
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from ray import serve
from starlette.concurrency import run_in_threadpool

from dreamray.model.answer import generate_answer
from dreamray.model.answer_inputs import AnswerError, check_model_dir, load_model
from dreamray.serving.page import PAGE
from dreamray.serving.protocol import (
    MAX_BODY_BYTES,
    GenerateRequest,
    RequestError,
    answer_payload,
    parse_generate_request,
)

APP_NAME = "dreamray"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
GpuChoice = Literal["auto", "yes", "no"]

api = FastAPI(title="dreamray generation", docs_url=None, redoc_url=None)


def _error(err: RequestError) -> JSONResponse:
    return JSONResponse(err.payload(), status_code=err.status)


@serve.deployment(name="DreamLLMServer", num_replicas=1)
@serve.ingress(api)
class DreamLLMServer:
    """One DreamLLM on the replica's device (CUDA when Ray gave it a GPU, else CPU)."""

    def __init__(self, model_dir: str, device: str | None = None) -> None:
        """Load the model.

        Args:
            model_dir: a DreamLLM artifact dir (ours or the reference's layout).
            device: None: CUDA when visible to the replica, else CPU.
        """
        self.model_dir = model_dir
        self.model = load_model(model_dir, device)
        self.device = str(next(self.model.parameters()).device)
        self.lock = threading.Lock()

    @api.get("/")
    def page(self) -> HTMLResponse:
        return HTMLResponse(PAGE)

    @api.get("/health")
    def health(self) -> dict[str, Any]:
        return {"ok": True, "model": self.model_dir, "device": self.device}

    @api.post("/generate")
    async def generate(self, request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return _error(RequestError("body", f"{declared} bytes, over the {MAX_BODY_BYTES} "
                                               "limit", 413))
        try:
            parsed = parse_generate_request(await request.body())
            return await run_in_threadpool(self._answer, parsed)
        except RequestError as err:
            return _error(err)
        except AnswerError as err:  # e.g. a prompt longer than the model's context
            return _error(RequestError.of(err))

    def _answer(self, request: GenerateRequest) -> dict[str, Any]:
        with self.lock:
            start = time.perf_counter()
            answer = generate_answer(self.model, request.prompt, request.images,
                                     request.options, image_names=request.image_names)
            return answer_payload(answer, time.perf_counter() - start)


def cluster_gpus() -> float:
    """GPUs in the connected Ray cluster."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


def build_app(model_dir: str | Path, *, num_gpus: int = 0, num_cpus: float = 1,
              device: str | None = None) -> serve.Application:
    """The app bound to a model dir; the replica asks for `num_gpus` (0 or 1) and `num_cpus`."""
    actor_options: dict[str, Any] = {"num_cpus": num_cpus}
    if num_gpus:
        actor_options["num_gpus"] = num_gpus
    deployment = DreamLLMServer.options(ray_actor_options=actor_options)
    return deployment.bind(str(Path(model_dir).resolve()), device)


def start_server(
    model_dir: str | Path,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    gpu: GpuChoice = "auto",
    num_cpus: float = 1,
    name: str = APP_NAME,
) -> str:
    """Deploy the app on the connected Ray cluster (started if none) and wait until it runs.

    Args:
        model_dir: the artifact dir (checked first: no Ray work for a dir that is not one).
        host: the HTTP bind address (loopback by default; ``0.0.0.0`` exposes it).
        port: the HTTP port.
        gpu: ``auto``: one GPU when the cluster has one; ``yes``: require one; ``no``: CPU.
        num_cpus: the replica's CPUs.
        name: the Serve application's name.

    Returns:
        The page's URL.

    Raises:
        AnswerError: (field ``model``) a dir that is not a DreamLLM artifact, or (``gpu``)
            ``gpu="yes"`` on a cluster without GPUs.
    """
    check_model_dir(model_dir)
    if gpu not in ("auto", "yes", "no"):
        raise AnswerError("gpu", f"auto, yes or no, got {gpu!r}")
    import ray

    if not ray.is_initialized():
        ray.init()
    gpus = cluster_gpus()
    if gpu == "yes" and gpus < 1:
        raise AnswerError("gpu", "yes, but the Ray cluster has no GPU")
    num_gpus = 1 if gpu == "yes" or (gpu == "auto" and gpus >= 1) else 0
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(model_dir, num_gpus=num_gpus, num_cpus=num_cpus), name=name,
              route_prefix="/")
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"
