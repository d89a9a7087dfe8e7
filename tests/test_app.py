"""`ipoke app`: the model side, the HTTP API on a real local server, and the command line (no browser needed)."""

from __future__ import annotations

import base64
import http.client
import io
import json
import socket
import threading
import urllib.parse

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from ipoke.app import PokeApp, make_server
from ipoke.cli import main
from ipoke.data.pokes import poke_map_from_coords
from ipoke.sampling import Poker


@pytest.fixture(scope="module")
def poker(tiny_model):
    return Poker.from_checkpoint(tiny_model)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2)]


@pytest.fixture
def server(poker, images, tmp_path):
    """A running app server on a free port; yields ``(base url, app)``."""
    app = PokeApp(poker, images, samples=2, out=tmp_path / "saved")
    httpd = make_server(app, port=0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", app
    httpd.shutdown()
    httpd.server_close()


def request(url: str, body: bytes | dict | list | None = None) -> tuple[int, bytes]:
    """GET (no body) or POST to the test's own server on 127.0.0.1 (nothing leaves the machine)."""
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname == "127.0.0.1"
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        connection.request("GET" if data is None else "POST", parts.path, body=data)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def gif_frames(encoded: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(encoded))) as gif:
        return np.stack([np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(gif)])


def test_animate_is_the_models_sample_for_the_seed(poker, images):
    app = PokeApp(poker, images, samples=2)
    pokes = np.array([[20.5, 30.0, 5.0, -3.0]], np.float32)
    videos = app.animate(1, pokes, seed=7, samples=3)
    x0 = torch.from_numpy(images[1]).permute(2, 0, 1).float().div(127.5).sub(1)[None]
    poke = torch.from_numpy(poke_map_from_coords(pokes, 64, poker.poke_size))[None]
    expected = poker.sample(x0, poke, n_samples=3, generator=torch.Generator().manual_seed(7))[0]
    torch.testing.assert_close(videos, expected, rtol=0, atol=0)
    assert videos.shape == (3, 11, 3, 64, 64)
    assert not torch.allclose(app.animate(1, pokes, seed=8, samples=3)[:, 1:], videos[:, 1:])
    # Temperature 0: every sample is the video of the most likely residual.
    mode = app.animate(1, pokes, seed=7, samples=2, temperature=0.0)
    torch.testing.assert_close(mode[0], mode[1], rtol=0, atol=0)
    expected = poker.sample(x0, poke, n_samples=1, generator=torch.Generator().manual_seed(0), temperature=0.0)[0, 0]
    torch.testing.assert_close(mode[0], expected, rtol=0, atol=1e-5)  # batch 2 vs 1: float rounding only


def test_page_info_and_images(server, images):
    url, _ = server
    status, page = request(url + "/")
    assert status == 200 and b"<canvas" in page and b"/api/poke" in page
    status, info = request(url + "/api/info")
    assert status == 200
    assert json.loads(info) == {"images": 2, "size": 64, "frames": 11, "samples": 2, "poke_size": 5, "fps": 5.0}
    status, png = request(url + "/api/image/1.png")
    decoded = cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert status == 200 and np.array_equal(decoded, images[1])  # lossless: exactly what the model sees
    assert request(url + "/api/image/2.png")[0] == 404
    assert request(url + "/api/image/x.png")[0] == 404
    assert request(url + "/nothing")[0] == 404


def test_poke_returns_one_looping_gif_per_sample_deterministic_for_the_seed(server):
    url, _ = server
    body = {"image": 0, "pokes": [[20, 30, 5, -3], [40, 12, 0, 4]], "seed": 3}
    status, payload = request(url + "/api/poke", body)
    result = json.loads(payload)
    assert status == 200 and result["seed"] == 3 and result["milliseconds"] > 0
    assert len(result["gifs"]) == 2  # the app's default samples
    frames = gif_frames(result["gifs"][0])
    assert frames.shape[1:] == (64, 64, 3) and 2 <= len(frames) <= 11
    assert json.loads(request(url + "/api/poke", body)[1])["gifs"] == result["gifs"]
    other = json.loads(request(url + "/api/poke", {**body, "seed": 4, "samples": 1})[1])
    assert len(other["gifs"]) == 1 and other["gifs"][0] != result["gifs"][0]
    mode = json.loads(request(url + "/api/poke", {**body, "temperature": 0})[1])
    assert mode["gifs"][0] == mode["gifs"][1] and mode["gifs"][0] != result["gifs"][0]


@pytest.mark.parametrize("body, message", [
    (b"{not json", "not JSON"),
    ([1, 2], "JSON object"),
    ({"pokes": [[1, 2, 3]]}, r"1 to 16 \[x, y, dx, dy\] rows"),
    ({"pokes": []}, "1 to 16"),
    ({"pokes": [["a", 1, 2, 3]]}, r"list of \[x, y, dx, dy\] rows"),
    ({"pokes": [[64, 10, 1, 1]]}, r"lie outside the 64x64 image"),
    ({"pokes": [[10, 10, float("nan"), 1]]}, "finite"),
    ({"pokes": [[10, 10, 1e30, 1]]}, "longer than 4 times the 64 px image"),
    ({"pokes": [[10, 10, 1, 1]], "image": 5}, r"image must be an index in \[0, 2\)"),
    ({"pokes": [[10, 10, 1, 1]], "seed": -1}, "seed must be"),
    ({"pokes": [[10, 10, 1, 1]], "samples": 17}, r"samples must be a whole number in \[1, 16\]"),
    ({"pokes": [[10, 10, 1, 1]], "temperature": -0.5}, r"temperature must be a number in \[0, 2.0\]"),
    ({"pokes": [[10, 10, 1, 1]], "temperature": "hot"}, "temperature must be"),
    # Misspelt keys were ignored: the defaults were used without a word.
    ({"pokes": [[10, 10, 1, 1]], "Temperature": 0, "n_samples": 8}, r"unknown key\(s\) \['Temperature', 'n_samples'\]"),
])
def test_bad_requests_say_what_is_wrong(server, body, message):
    import re

    url, _ = server
    status, payload = request(url + "/api/poke", body)
    assert status == 400 and re.search(message, json.loads(payload)["error"])


def test_save_writes_the_samples_like_ipoke_sample(server):
    url, app = server
    body = {"image": 1, "pokes": [[20, 30, 5, -3]], "seed": 2}
    status, payload = request(url + "/api/save", body)
    folder = app.out / "poke_0"
    assert status == 200 and json.loads(payload)["folder"] == str(folder.resolve())
    assert sorted(path.name for path in folder.iterdir()) == [
        "ipoke_sample.json", "overview_0.gif", "overview_0.png", "sample_0_0.gif", "sample_0_0.mp4", "sample_0_1.gif",
        "sample_0_1.mp4"]
    record = json.loads((folder / "ipoke_sample.json").read_text())
    assert record["image"] == 1 and record["seed"] == 2 and record["pokes_in_model_pixels"] == [[20, 30, 5, -3]]
    assert record["temperature"] == 1.0
    assert cv2.imread(str(folder / "overview_0.png")).shape == (256, 3 * 256 + 2 * 4, 3)
    assert json.loads(request(url + "/api/save", body)[1])["folder"].endswith("poke_1")
    assert request(url + "/api/save", {"pokes": []})[0] == 400 and not (app.out / "poke_2").exists()


def test_two_apps_sharing_one_out_folder_save_to_different_folders(poker, images, tmp_path, monkeypatch):
    # Each app's lock covers its own process only: both picked poke_0, and one save replaced the other's.
    import ipoke.visualize as visualize

    first, second = (PokeApp(poker, images, samples=1, out=tmp_path / "shared") for _ in range(2))
    real_write = visualize.write_sample_outputs
    inner = {}

    def write_while_the_other_app_saves(folder, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if not inner:  # the first app is writing poke_0 when the second app's save comes in
            inner["folder"] = None
            inner["folder"] = second.save({"image": 0, "pokes": [[10, 10, 2, 0]], "seed": 2})["folder"]
        return real_write(folder, *args, **kwargs)

    monkeypatch.setattr(visualize, "write_sample_outputs", write_while_the_other_app_saves)
    outer = first.save({"image": 0, "pokes": [[10, 10, 2, 0]], "seed": 1})["folder"]
    assert {outer, inner["folder"]} == {str((tmp_path / "shared" / name).resolve()) for name in ("poke_0", "poke_1")}
    seeds = {json.loads((tmp_path / "shared" / name / "ipoke_sample.json").read_text())["seed"]
             for name in ("poke_0", "poke_1")}
    assert seeds == {1, 2}


def test_closing_the_server_waits_for_a_save_in_progress(poker, images, tmp_path, monkeypatch):
    # Request threads were daemons: Ctrl-C or SIGTERM during a save killed it with the interpreter and left a
    # half-written hidden folder in --out. server_close() now waits for it.
    app = PokeApp(poker, images, samples=2, out=tmp_path / "saved")
    started, release = threading.Event(), threading.Event()
    real_save = PokeApp.save

    def slow_save(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        started.set()
        assert release.wait(30)
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(PokeApp, "save", slow_save)
    httpd = make_server(app, port=0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    client = threading.Thread(target=request, args=(url + "/api/save", {"image": 0, "pokes": [[20, 30, 5, -3]]}))
    client.start()
    assert started.wait(30)
    httpd.shutdown()
    closer = threading.Thread(target=httpd.server_close)
    closer.start()
    closer.join(0.5)
    assert closer.is_alive()  # blocked on the save, which cannot finish before it is released
    release.set()
    closer.join(60)
    client.join(60)
    assert not closer.is_alive() and (app.out / "poke_0" / "ipoke_sample.json").is_file()
    assert not any(path.name.startswith(".") for path in app.out.iterdir())


def test_an_idle_connection_does_not_keep_the_server_from_stopping(poker, images, tmp_path, monkeypatch):
    # A client that opened a socket and sent nothing (a browser's spare connection, a suspended curl) blocked its
    # request thread in a read with no timeout, and server_close() (Ctrl-C, SIGTERM) joined it forever.
    import ipoke.app as app_module

    monkeypatch.setattr(app_module, "REQUEST_TIMEOUT_S", 0.5)
    httpd = make_server(PokeApp(poker, images, samples=2, out=tmp_path / "saved"), port=0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    with socket.create_connection(("127.0.0.1", httpd.server_address[1])) as idle:
        idle.sendall(b"POST /api/poke HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")  # a body that never ends
        status, _ = request(f"http://127.0.0.1:{httpd.server_address[1]}/api/info")
        assert status == 200  # others are served meanwhile
        httpd.shutdown()
        closer = threading.Thread(target=httpd.server_close)
        closer.start()
        closer.join(10)
        assert not closer.is_alive()


def test_a_failure_while_sampling_is_reported_and_the_server_keeps_serving(server, monkeypatch):
    url, app = server

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(app, "animate", out_of_memory)
    status, payload = request(url + "/api/poke", {"pokes": [[10, 10, 2, 0]]})
    assert status == 500 and json.loads(payload)["error"] == "RuntimeError: CUDA out of memory"
    monkeypatch.undo()
    assert request(url + "/api/poke", {"pokes": [[10, 10, 2, 0]]})[0] == 200


def test_the_app_refuses_images_it_cannot_use(poker):
    with pytest.raises(ValueError, match="at least one image"):
        PokeApp(poker, [])
    with pytest.raises(ValueError, match=r"image 0 must be uint8 \(64, 64, 3\).*prepare_image"):
        PokeApp(poker, [np.zeros((32, 32, 3), np.uint8)])
    with pytest.raises(ValueError, match=r"samples must be in \[1, 16\]"):
        PokeApp(poker, [np.zeros((64, 64, 3), np.uint8)], samples=0)


@pytest.mark.parametrize("length", ["abc", "-1", str(10**15)])
def test_a_bad_content_length_is_a_clear_400(server, length):
    # "-1" hung the request until the client gave up, 10**15 was a MemoryError, "abc" a 500.
    url, _ = server
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.putrequest("POST", "/api/poke")
        connection.putheader("Content-Length", length)
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 400 and "Content-Length" in json.loads(response.read())["error"]
    finally:
        connection.close()


def test_command_line(tiny_model, tmp_path, monkeypatch, capsys, synthetic_dataset):
    import ipoke.app as app_module

    image = tmp_path / "wide.png"
    wide = np.zeros((90, 120, 3), np.uint8)
    wide[:, 15:105] = 200  # the centre square is the bright part
    cv2.imwrite(str(image), wide)
    assert main(["app", "--ckpt", str(tiny_model)]) == 2
    assert "give either --image" in capsys.readouterr().err
    assert main(["app", "--ckpt", str(tiny_model), "--image", str(tmp_path / "none.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["app", "--ckpt", str(tiny_model), "--image", str(image), "--n", "3"]) == 2
    assert "--n is for --data" in capsys.readouterr().err
    # A model or image that cannot be loaded is named as such (it was blamed on the port).
    assert main(["app", "--ckpt", str(tmp_path / "nowhere"), "--image", str(image)]) == 2
    error = capsys.readouterr().err
    assert "nowhere" in error and "--port" not in error
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("text")
    assert main(["app", "--ckpt", str(tiny_model), "--image", str(not_an_image)]) == 2
    assert "--port" not in capsys.readouterr().err
    # An --out that cannot be a folder is refused at the start (it failed at the first save, as a 400 or 500).
    (tmp_path / "afile").write_text("x")
    for out in ("afile", "afile/sub"):
        assert main(["app", "--ckpt", str(tiny_model), "--image", str(image), "--out", str(tmp_path / out)]) == 2
        assert f"--out {tmp_path / out}" in capsys.readouterr().err
    # A port in use is one clear line.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["app", "--ckpt", str(tiny_model), "--image", str(image), "--port", str(port)]) == 2
    assert f"cannot serve on 127.0.0.1:{port}" in capsys.readouterr().err
    # The served app gets the images as the model sees them (serving itself is replaced here).
    seen = {}
    monkeypatch.setattr(app_module, "serve", lambda app, host, port: seen.update(app=app, host=host, port=port))
    assert main(["app", "--ckpt", str(tiny_model), "--image", str(image), "--image", str(image), "--samples", "4"]) == 0
    app = seen["app"]
    assert len(app.images) == 2 and app.samples == 4 and seen["port"] == 8765 and seen["host"] == "127.0.0.1"
    assert (app.images[0] == 200).all()
    assert main(["app", "--ckpt", str(tiny_model), "--data", synthetic_dataset, "--n", "3", "--port", "0"]) == 0
    assert len(seen["app"].images) == 3 and seen["port"] == 0
