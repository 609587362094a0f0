"""The generation app on Ray Serve (the session's local cluster), over HTTP on 127.0.0.1: the page,
an interleaved answer with text and a PNG, and bad requests answered with a 4xx while the replica
keeps serving. Serve is shut down at the end of the module."""

from __future__ import annotations

import base64
import io
import socket
import sys
from pathlib import Path

import pytest
import requests
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "unit"))
from coco_fixtures import write_artifact  # noqa: E402

# the tiny model draws at once (<dream_start> boosted), then writes; few steps keep it fast
DRAW = {"max_images": 1, "image_bias": 1.0e4, "steps": 2, "max_new_tokens": 6}
TIMEOUT = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(ray_cluster, tiny_zoo, tmp_path_factory):
    from ray import serve

    from dreamray.serving.app import start_server

    artifact = write_artifact(tiny_zoo, tmp_path_factory.mktemp("serve") / "artifact")
    port = free_port()
    try:
        url = start_server(artifact, port=port, gpu="auto")
        yield url
    finally:
        serve.shutdown()


def _post(url: str, **body) -> requests.Response:
    return requests.post(url + "generate", json=body, timeout=TIMEOUT)


def _png(data_url: str) -> Image.Image:
    assert data_url.startswith("data:image/png;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(data_url.partition(",")[2])))
    image.load()
    return image


def test_bound_to_loopback_with_the_page_and_health(server):
    assert server.startswith("http://127.0.0.1:")
    page = requests.get(server, timeout=TIMEOUT)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="prompt"' in page.text and 'type="file"' in page.text
    from dreamray.serving.app import cluster_gpus

    health = requests.get(server + "health", timeout=TIMEOUT).json()
    assert health["ok"] and health["model"].endswith("artifact")
    assert health["device"] == ("cuda:0" if cluster_gpus() >= 1 else "cpu")  # gpu="auto"


def test_a_prompt_gets_text_and_a_png(server):
    response = _post(server, prompt="a story about a red bus", **DRAW)
    assert response.status_code == 200, response.text
    answer = response.json()
    kinds = [s["type"] for s in answer["segments"]]
    assert answer["mode"] == "interleaved" and kinds == ["image", "text"]
    text, image = answer["segments"][1]["text"], _png(answer["segments"][0]["src"])
    assert text.strip() and image.format == "PNG" and image.size[0] == image.size[1] > 0
    again = _post(server, prompt="a story about a red bus", **DRAW).json()
    assert again["segments"] == answer["segments"]  # same seed, same answer


def test_an_uploaded_image_is_read(server):
    buffer = io.BytesIO()
    Image.new("RGB", (20, 12), "green").save(buffer, format="PNG")
    upload = {"name": "green.png", "data": base64.b64encode(buffer.getvalue()).decode()}
    response = _post(server, prompt="what is <image>?", images=[upload], mode="text",
                     max_new_tokens=4)
    assert response.status_code == 200, response.text
    assert [s["type"] for s in response.json()["segments"]] in (["text"], [])


def test_bad_requests_get_4xx_and_the_next_good_one_succeeds(server):
    notes = {"name": "notes.txt", "data": base64.b64encode(b"not a picture").decode()}
    bad = _post(server, prompt="look <image>", images=[notes], **DRAW)
    assert bad.status_code == 400
    assert bad.json()["field"] == "images[0] (notes.txt)" and "not an image" in bad.json()["error"]

    long = _post(server, prompt="word " * 2000, **DRAW)
    assert long.status_code == 400 and long.json()["field"] == "prompt"
    assert "context of 512 tokens" in long.json()["error"]

    not_json = requests.post(server + "generate", data=b"{oops",
                             headers={"Content-Type": "application/json"}, timeout=TIMEOUT)
    assert not_json.status_code == 400 and not_json.json()["field"] == "body"

    good = _post(server, prompt="a red bus", **DRAW)
    assert good.status_code == 200
    assert [s["type"] for s in good.json()["segments"]][0] == "image"
