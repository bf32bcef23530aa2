"""The served model under bad input: predict, `mlflow models serve` and `scenesearch query` each
name the problem (BadQuery / HTTP 400 / one line per file) and keep answering good queries."""

import http.client
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from scenesearch import serving

pytestmark = pytest.mark.slow
TOP_K = 3


@pytest.fixture(scope="module")
def logged(smoke_run, served):
    """The shared run's vgg_baseline version (nothing learnt in it: the cheapest servable method),
    served by the session's `mlflow models serve`, and a query photo."""
    from scenesearch.io import decode_image

    image = decode_image("q", sorted(Path(smoke_run.dataset).glob("queries/*/*.png"))[0].read_bytes())
    return {"uri": served.uri, "model_uri": served.model_uri, "image": image}


@pytest.fixture(scope="module")
def pyfunc(logged):
    return serving.load(logged["model_uri"], logged["uri"])


# (name, input, the phrase of the message): what predict itself must reject
BAD_ARRAYS = [
    ("2-D", np.zeros((8, 8), np.uint8), "shaped (batch, height, width, 3)"),
    ("4 channels", np.zeros((1, 8, 8, 4), np.uint8), "got an array of shape (1, 8, 8, 4)"),
    ("1 pixel", np.zeros((1, 1, 1, 3), np.uint8), "smaller than the 8x8 minimum"),
    ("ragged", [np.zeros((8, 8, 3)), np.zeros((9, 8, 3))], "same shape"),
    ("strings", np.full((1, 8, 8, 3), "a"), "got dtype <U1"),
    ("floats above 1", np.full((1, 8, 8, 3), 1.5), "float pixels must lie in [0, 1]"),
    ("floats above 255", np.full((1, 8, 8, 3), 300.0), "float pixels must lie in [0, 1]"),
    ("negative ints", np.full((1, 8, 8, 3), -4), "integer pixels must lie in [0, 255]"),
    ("ints above 255", np.full((1, 8, 8, 3), 256), "integer pixels must lie in [0, 255]"),
    ("NaN", np.full((1, 8, 8, 3), np.nan), "NaN"),
    ("0 images", np.zeros((0, 8, 8, 3), np.uint8), "the batch is empty"),
    # declared, not allocated: a broadcast view of one byte
    ("20000x20000", np.broadcast_to(np.zeros(1, np.uint8), (1, 20000, 20000, 3)), f"more than the {serving.MAX_QUERY_PIXELS:,}"),
    ("MAX_BATCH + 1", np.zeros((serving.MAX_BATCH + 1, 8, 8, 3), np.uint8), f"more than the {serving.MAX_BATCH} one call accepts"),
]


@pytest.mark.parametrize("name,x,phrase", BAD_ARRAYS, ids=[c[0] for c in BAD_ARRAYS])
def test_predict_names_the_problem(pyfunc, name, x, phrase):
    with pytest.raises(serving.BadQuery) as e:
        pyfunc.unwrap_python_model().predict(None, x)
    assert phrase in e.value.message and e.value.get_http_status_code() == 400
    assert "\n" not in e.value.message  # one sentence


def test_predict_bad_params_and_pyfunc_wrapper(pyfunc, logged):
    with pytest.raises(serving.BadQuery, match="top_k must be a positive integer, got -1"):
        pyfunc.predict(logged["image"][None], params={"top_k": -1})
    # through MLflow's wrapper (which checks the signature first) the size limits still hold
    with pytest.raises(serving.BadQuery, match="more than the 64"):
        pyfunc.predict(np.zeros((serving.MAX_BATCH + 1, 8, 8, 3), np.uint8))


def test_good_input_is_unchanged(pyfunc, logged):
    image = logged["image"]
    frame = pyfunc.predict(image[None], params={"top_k": TOP_K})
    assert frame["rank"].tolist() == [1, 2, 3]
    raw = pyfunc.unwrap_python_model()
    # ints in [0, 255] and floats in [0, 1] mean the same pixels as uint8
    for same in (image.astype(np.int64), image.astype(np.float32) / 255.0):
        again = raw.predict(None, same[None], params={"top_k": TOP_K})
        assert again.scene_id.tolist() == frame.scene_id.tolist()
    full = raw.predict(None, np.repeat(image[None], serving.MAX_BATCH, 0), params={"top_k": 1})
    assert len(full) == serving.MAX_BATCH


# ------------------------------------------------------------------------------------------
# mlflow models serve
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(served):
    """The port of the session's `mlflow models serve` (tests/e2e/conftest.py::served)."""
    return served.port


def _post(port: int, body: bytes) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("POST", "/invocations", body=body, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, json.loads(data)


def _inputs(x, **params) -> bytes:
    return json.dumps({"inputs": x, **({"params": params} if params else {})}).encode()


# (name, body, the phrase of the JSON message); the shape cases are MLflow's own signature check
BAD_BODIES = [
    ("text", b"hello, model", "valid JSON"),
    ("random bytes", bytes(np.random.default_rng(0).integers(0, 256, 512, dtype=np.uint8)), "valid JSON"),
    ("zero bytes", b"", "valid JSON"),
    ("no inputs", b'{"images": [1]}', "input fields"),
    ("2-D", _inputs([[1, 2], [3, 4]]), "does not match expected shape"),
    ("4 channels", _inputs(np.zeros((1, 8, 8, 4), int).tolist()), "does not match expected shape"),
    ("1 pixel", _inputs([[[[1, 2, 3]]]]), "smaller than the 8x8 minimum"),
    ("ragged", _inputs([np.zeros((8, 8, 3), int).tolist(), np.zeros((4, 8, 3), int).tolist()]), "inhomogeneous"),
    ("strings", _inputs(np.full((1, 8, 8, 3), "a").tolist()), "invalid literal"),
    ("floats above 255", _inputs(np.full((1, 8, 8, 3), 300.5).tolist()), "out of bounds for uint8"),
    ("negative ints", _inputs(np.full((1, 8, 8, 3), -4).tolist()), "out of bounds for uint8"),
    ("NaN", b'{"inputs": [[[[NaN, 1, 2]]]]}', "NaN"),
    ("0 images", _inputs([]), "model signature"),
    ("MAX_BATCH + 1", _inputs(np.zeros((serving.MAX_BATCH + 1, 8, 8, 3), int).tolist()), f"more than the {serving.MAX_BATCH} one call accepts"),
    ("top_k 0", _inputs(np.zeros((1, 8, 8, 3), int).tolist(), top_k=0), "top_k must be a positive integer"),
]


@pytest.mark.parametrize("name,body,phrase", BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
def test_server_answers_4xx_and_keeps_serving(server, logged, name, body, phrase):
    status, answer = _post(server, body)
    assert 400 <= status < 500 and phrase in answer["message"], (status, answer.get("message", "")[-500:])
    status, answer = _post(server, _inputs(logged["image"][None].tolist(), top_k=TOP_K))
    assert status == 200 and [p["rank"] for p in answer["predictions"]] == [1, 2, 3]


# ------------------------------------------------------------------------------------------
# scenesearch query
# ------------------------------------------------------------------------------------------


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height (the pixels are never there)."""
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))
    idat = b"IDAT" + zlib.compress(b"\0" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", len(idat) - 4) + idat + struct.pack(">I", zlib.crc32(idat)) + b"\0\0\0\0IEND\xaeB`\x82"


def test_query_cli_one_line_per_bad_file(logged, tmp_path):
    from PIL import Image

    good = tmp_path / "good.png"
    Image.fromarray(logged["image"]).save(good)
    bad = {
        "text.png": (b"this is not an image\n", "cannot be decoded"),
        "random.jpg": (bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8)), "cannot be decoded"),
        "empty.png": (b"", "empty"),
        "huge.png": (_png_declaring(20000, 20000), "decompression bomb"),  # PIL refuses it at the header
        "big.png": (_png_declaring(8000, 8000), f"8000x8000 = 64,000,000 pixels, above the query image limit ({serving.MAX_QUERY_PIXELS:,})"),
        "dot.png": (None, "smaller than the 8x8 minimum"),
    }
    for name, (data, _) in bad.items():
        if data is None:
            Image.new("RGB", (1, 1)).save(tmp_path / name)
        else:
            (tmp_path / name).write_bytes(data)
    files = [str(good), *(str(tmp_path / n) for n in bad), str(good)]
    cmd = [sys.executable, "-m", "scenesearch.cli", "query", "--preset", "smoke", "--model", logged["model_uri"], "--tracking-uri", logged["uri"], "--top-k", str(TOP_K)]
    p = subprocess.run([*cmd, *files], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    for name, (_, phrase) in bad.items():
        lines = [line for line in p.stdout.splitlines() if line.startswith(f"{tmp_path / name}: ")]
        assert len(lines) == 1 and phrase in lines[0], (name, p.stdout)
    assert p.stdout.count(f"{good}  (ranked by vgg_baseline)") == 2 and p.stdout.count("    1  ") == 2
    assert p.stderr.strip().splitlines()[-1] == f"scenesearch query: {len(bad)} of {len(files)} query images could not be read (see above)"
