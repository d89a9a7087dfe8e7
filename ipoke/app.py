"""``ipoke app``: poke images with the mouse in a browser and watch the samples play.

A small local web app (Python's own ``http.server``: no extra dependency, and it works on a remote GPU machine
through ``ssh -L 8765:localhost:8765 host``). The page shows the model's view of an image; drag from a point of the
object in the direction it should move and let go: the server draws ``samples`` videos for that poke and the page
plays them. The drag is the poke ``(x, y, dx, dy)`` in pixels of the model's input, the same numbers that
``Poker.sample`` and the poke maps of the datasets use (pixel ``i`` covers ``[i, i + 1)``).

Page controls (and keys): new samples for the same pokes (``r``, the next seed), add mode where each drag adds a poke
and all act together (``a``), clear (``c``), previous / next image (``p`` / ``n``), save the shown samples to
``<out>/poke_<i>/`` as ``ipoke sample`` writes them (``s``).

HTTP API (JSON; what the page calls, and what a script can call):

* ``GET /api/info`` -> ``{"images": N, "size": S, "frames": T + 1, "samples": K, "poke_size": ..., "fps": ...}``
* ``GET /api/image/<i>.png`` -> the start frame ``i`` (``S x S`` PNG)
* ``POST /api/poke`` ``{"image": i, "pokes": [[x, y, dx, dy], ...], "seed": s, "samples": k, "temperature": t}``
  (all but ``pokes`` optional; temperature 1 as trained, 0 the most likely residual r = 0) ->
  ``{"gifs": [base64 GIF per sample], "seed": s, "milliseconds": ...}``
* ``POST /api/save`` (same body) -> ``{"folder": path}``

Bad requests get status 400 and ``{"error": message}``; a failure while sampling or saving (out of GPU memory, a full
disk) gets 500 with the error, and the server keeps serving.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ipoke.data.datasets import frames_to_tensor
from ipoke.data.layouts import SAMPLE_RECORD
from ipoke.data.pokes import poke_map_from_coords
from ipoke.sampling import MAX_POKE_LENGTH  # in sides of the model's square, the app's image

MAX_SAMPLES = 16
MAX_POKES = 16
MAX_TEMPERATURE = 2.0


MAX_REQUEST_BYTES = 1 << 20  # a poke request is a few hundred bytes
# Seconds a connection may wait between bytes of its request: an idle or stalled client (a browser's spare socket, a
# suspended curl) blocked the request thread in a read, and with it Ctrl-C and SIGTERM, until the client went away.
REQUEST_TIMEOUT_S = 10.0
REQUEST_KEYS = ("image", "pokes", "seed", "samples", "temperature")


class PokeRequestError(ValueError):
    """A request the app cannot serve; the message says what was wrong."""


class PokeApp:
    """The model side of the app: start frames, sampling and saving, independent of HTTP.

    Args:
        poker: A loaded :class:`ipoke.sampling.Poker`.
        images: Start frames, uint8 ``(S, S, 3)`` RGB at the model's size ``S`` (see :meth:`Poker.prepare_image`).
        samples: Default videos per poke.
        out: Folder that ``save`` writes into (``<out>/poke_<i>/``).
        fps: Frames per second of the played and saved videos.
        scale: Integer upscaling of saved videos.
    """

    def __init__(self, poker: Any, images: Sequence[np.ndarray], *, samples: int = 3,
                 out: str | Path = "ipoke_app", fps: float = 5.0, scale: int = 4) -> None:
        if not len(images):
            raise ValueError("the app needs at least one image")
        size = poker.size
        for index, image in enumerate(images):
            if image.shape != (size, size, 3) or image.dtype != np.uint8:
                raise ValueError(f"image {index} must be uint8 ({size}, {size}, 3) (the model's size), got "
                                 f"{image.dtype} {image.shape}; prepare it with Poker.prepare_image")
        if not 1 <= samples <= MAX_SAMPLES:
            raise ValueError(f"samples must be in [1, {MAX_SAMPLES}], got {samples}")
        self.poker, self.images = poker, [np.ascontiguousarray(image) for image in images]
        self.samples, self.out, self.fps, self.scale = int(samples), Path(out), float(fps), int(scale)
        self._lock = threading.Lock()  # one sampling at a time: the model is shared by the server's threads

    @property
    def size(self) -> int:
        return self.poker.size

    def info(self) -> dict[str, Any]:
        return {"images": len(self.images), "size": self.size, "frames": self.poker.n_frames + 1,
                "samples": self.samples, "poke_size": self.poker.poke_size, "fps": self.fps}

    def image_png(self, index: int) -> bytes:
        image = self.images[self._image_index(index)]
        ok, data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        assert ok
        return data.tobytes()

    def parse(self, body: dict[str, Any]) -> tuple[int, np.ndarray, int, int, float]:
        """Check a poke request: ``(image index, pokes (P, 4) float32, seed, samples, temperature)``.

        Raises:
            PokeRequestError: Naming what is wrong.
        """
        if not isinstance(body, dict):
            raise PokeRequestError("the request body must be a JSON object")
        unknown = sorted(str(key) for key in body if key not in REQUEST_KEYS)
        if unknown:  # a misspelt "Temperature" or "n_samples" was ignored: the defaults were used silently
            raise PokeRequestError(f"unknown key(s) {unknown} in the request; the keys are {list(REQUEST_KEYS)}")
        index = self._image_index(body.get("image", 0))
        try:
            pokes = np.asarray(body.get("pokes"), np.float32)
        except (TypeError, ValueError) as error:
            raise PokeRequestError(f"pokes must be a list of [x, y, dx, dy] rows, got {body.get('pokes')!r}") from error
        if pokes.ndim != 2 or pokes.shape[1] != 4 or not 1 <= len(pokes) <= MAX_POKES:
            raise PokeRequestError(f"pokes must be 1 to {MAX_POKES} [x, y, dx, dy] rows, got {body.get('pokes')!r}")
        if not np.isfinite(pokes).all():
            raise PokeRequestError("pokes must be finite numbers")
        outside = (pokes[:, :2] < 0).any(axis=1) | (pokes[:, :2] >= self.size).any(axis=1)
        if outside.any():
            raise PokeRequestError(f"poke(s) at {pokes[outside, :2].tolist()} lie outside the {self.size}x{self.size} "
                                   "image")
        longest = float(np.hypot(pokes[:, 2], pokes[:, 3]).max())
        if longest > MAX_POKE_LENGTH * self.size:  # 1e30 gave NaN videos, and an OpenCV error when saved
            raise PokeRequestError(f"a poke of length {longest:.4g} px is longer than {MAX_POKE_LENGTH} times the "
                                   f"{self.size} px image")
        seed, samples = body.get("seed", 0), body.get("samples", self.samples)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise PokeRequestError(f"seed must be a whole number in [0, 2**63), got {seed!r}")
        if isinstance(samples, bool) or not isinstance(samples, int) or not 1 <= samples <= MAX_SAMPLES:
            raise PokeRequestError(f"samples must be a whole number in [1, {MAX_SAMPLES}], got {samples!r}")
        temperature = body.get("temperature", 1.0)
        if (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                or not 0 <= temperature <= MAX_TEMPERATURE):
            raise PokeRequestError(f"temperature must be a number in [0, {MAX_TEMPERATURE}], got {temperature!r}")
        return index, pokes, seed, samples, float(temperature)

    def animate(self, index: int, pokes: np.ndarray, *, seed: int, samples: int,
                temperature: float = 1.0) -> torch.Tensor:
        """``samples`` videos ``(K, T+1, 3, S, S)`` in [-1, 1] for start frame ``index`` and ``pokes`` in model
        pixels, deterministic for ``seed`` (the same as ``Poker.sample`` with a generator seeded so). ``temperature``
        is the residuals' standard deviation: 1 as trained and evaluated, 0 the most likely residual
        r = 0."""
        image = self.images[self._image_index(index)]
        x0 = frames_to_tensor(image[None])
        poke = torch.from_numpy(poke_map_from_coords(pokes, self.size, self.poker.poke_size)).unsqueeze(0)
        with self._lock:
            videos = self.poker.sample(x0, poke, n_samples=samples, generator=torch.Generator().manual_seed(seed),
                                       temperature=temperature)
        return videos[0].cpu()

    def poke(self, body: dict[str, Any]) -> dict[str, Any]:
        """Serve ``POST /api/poke``."""
        from ipoke.data.video_io import gif_bytes

        index, pokes, seed, samples, temperature = self.parse(body)
        start = time.perf_counter()
        videos = self.animate(index, pokes, seed=seed, samples=samples, temperature=temperature)
        milliseconds = (time.perf_counter() - start) * 1000
        # fast palettes: with the default median cut, encoding took 140 ms per GIF on the H100 machine, four times
        # the sampling itself (benchmarks/bench_poker.py); saves (write_sample_outputs) keep the better palette.
        gifs = [base64.b64encode(gif_bytes(video, fps=self.fps, fast=True)).decode("ascii") for video in videos]
        return {"gifs": gifs, "seed": seed, "milliseconds": round(milliseconds, 1)}

    def save(self, body: dict[str, Any]) -> dict[str, Any]:
        """Serve ``POST /api/save``: write the request's samples to the next free ``<out>/poke_<i>/``."""
        from ipoke.utils import atomic_directory
        from ipoke.visualize import write_sample_outputs

        index, pokes, seed, samples, temperature = self.parse(body)
        videos = self.animate(index, pokes, seed=seed, samples=samples, temperature=temperature)
        with self._lock:  # two saves must not pick the same folder
            # The number is claimed by creating its folder (exclusive across processes: a second app sharing --out
            # takes the next one; with a check for existence both picked poke_N, and one save replaced the other).
            self.out.mkdir(parents=True, exist_ok=True)
            number = 0
            while True:
                target = self.out / f"poke_{number}"
                try:
                    target.mkdir()
                    break
                except FileExistsError:
                    number += 1
            try:
                with atomic_directory(target, marker=SAMPLE_RECORD) as folder:  # replaces the empty claimed folder
                    write_sample_outputs(folder, 0, videos[0, 0], pokes, videos, fps=self.fps, scale=self.scale)
                    record = {"written_by": "ipoke app", "image": index, "seed": seed, "samples": samples,
                              "temperature": temperature, "size": self.size, "pokes_in_model_pixels": pokes.tolist()}
                    (folder / SAMPLE_RECORD).write_text(json.dumps(record, indent=1))
            except BaseException:
                if target.is_dir() and not any(target.iterdir()):
                    target.rmdir()  # give the number back: nothing half-written stays
                raise
        return {"folder": str(target.resolve())}

    def _image_index(self, index: Any) -> int:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self.images):
            raise PokeRequestError(f"image must be an index in [0, {len(self.images)}), got {index!r}")
        return index


def make_server(app: PokeApp, *, host: str = "127.0.0.1", port: int = 8765) -> ThreadingHTTPServer:
    """An HTTP server for ``app`` (not started: call ``serve_forever``; port 0 picks a free port)."""

    class Handler(BaseHTTPRequestHandler):
        timeout = REQUEST_TIMEOUT_S  # socket timeout of every read (StreamRequestHandler applies it)

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path in ("/", "/index.html"):
                self._send(HTTPStatus.OK, PAGE.encode(), "text/html; charset=utf-8")
            elif self.path == "/api/info":
                self._json(HTTPStatus.OK, app.info())
            elif self.path.startswith("/api/image/") and self.path.endswith(".png"):
                try:
                    index = int(self.path[len("/api/image/"):-len(".png")])
                    self._send(HTTPStatus.OK, app.image_png(index), "image/png")
                except (ValueError, PokeRequestError) as error:
                    self._json(HTTPStatus.NOT_FOUND, {"error": str(error)})
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no page {self.path}"})

        def do_POST(self) -> None:  # noqa: N802
            routes = {"/api/poke": app.poke, "/api/save": app.save}
            if self.path not in routes:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no endpoint {self.path}"})
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_REQUEST_BYTES:  # a negative length hung the server, a huge one ate memory
                self._json(HTTPStatus.BAD_REQUEST, {"error": f"Content-Length must be a whole number of bytes in "
                                                             f"[0, {MAX_REQUEST_BYTES}]"})
                return
            try:
                body = json.loads(self.rfile.read(length) or b"null")
                self._json(HTTPStatus.OK, routes[self.path](body))
            except json.JSONDecodeError as error:
                self._json(HTTPStatus.BAD_REQUEST, {"error": f"the request body is not JSON: {error}"})
            except (PokeRequestError, FileExistsError) as error:
                self._json(HTTPStatus.BAD_REQUEST, {"error": str(error)})
            except Exception as error:  # noqa: BLE001 - the page shows it; the server keeps serving
                self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(error).__name__}: {error}"})

        def _json(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
            self._send(status, json.dumps(payload).encode(), "application/json")

        def _send(self, status: HTTPStatus, data: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # no line per request on the terminal

    server = ThreadingHTTPServer((host, port), Handler)
    # Request threads are not daemons, so that server_close() (on Ctrl-C or SIGTERM) waits for a save in progress:
    # as daemons they were killed with the interpreter mid-save, leaving a half-written hidden folder in --out.
    server.daemon_threads = False
    return server


def serve(app: PokeApp, *, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Serve the app until Ctrl-C, printing where to open it."""
    server = make_server(app, host=host, port=port)
    shown = "localhost" if host in ("127.0.0.1", "0.0.0.0", "") else host
    address = f"http://{shown}:{server.server_address[1]}"
    print(f"ipoke app: open {address} in a browser ({len(app.images)} image(s), {app.samples} samples per poke; "
          f"from another machine: ssh -L {server.server_address[1]}:localhost:{server.server_address[1]} <this host>). "
          "Ctrl-C stops it.", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("ipoke app: stopping (a save in progress is finished first)", flush=True)
    finally:
        server.server_close()  # joins the request threads (block_on_close)
    print("ipoke app: stopped")


# The page: one canvas for the start frame and the pokes, the samples as looping GIFs. Pointer events give the
# drag; coordinates are converted from CSS pixels to the model's pixels (the canvas is shown enlarged).
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>ipoke: poke an image</title>
<style>
 body { font-family: sans-serif; margin: 16px; color: #222; }
 canvas, .samples img { width: 256px; height: 256px; image-rendering: pixelated; border: 1px solid #bbb; }
 canvas { cursor: crosshair; touch-action: none; }
 .row { display: flex; gap: 8px; flex-wrap: wrap; align-items: flex-start; }
 .controls { margin: 10px 0; } button { margin-right: 4px; }
 #status { color: #555; margin-top: 6px; min-height: 1.2em; }
</style></head><body>
<h3>ipoke: drag from a point of the object in the direction it should move</h3>
<div class="row"><canvas id="image"></canvas><div class="row samples" id="samples"></div></div>
<div class="controls">
 <button id="prev">&larr; image (p)</button><button id="next">image &rarr; (n)</button>
 <button id="again">new samples (r)</button>
 <label><input type="checkbox" id="add"> add pokes (a)</label>
 <label title="1: samples as trained and evaluated; 0: the most likely residual, r = 0">temperature
  <input type="number" id="temperature" min="0" max="2" step="0.25" value="1" style="width: 4em"></label>
 <button id="clear">clear (c)</button><button id="save">save (s)</button>
 <span id="which"></span>
</div>
<div id="status">loading...</div>
<script>
let info = null, image = 0, pokes = [], seed = 0, drag = null, busy = false;
const canvas = document.getElementById("image"), context = canvas.getContext("2d"), picture = new Image();
const status = text => { document.getElementById("status").textContent = text; };
const temperature = () => Math.min(2, Math.max(0, Number(document.getElementById("temperature").value) || 0));
document.getElementById("temperature").addEventListener("change", () => sample());
async function call(path, body) {
  const response = await fetch(path, body === undefined ? {} : {method: "POST", body: JSON.stringify(body)});
  const payload = await response.json();
  if (!response.ok) throw new Error(payload.error || response.statusText);
  return payload;
}
function draw() {  // the canvas has 256 px of its own: the image enlarged, sharp arrows on top
  const scale = canvas.width / info.size;
  context.imageSmoothingEnabled = false;
  context.drawImage(picture, 0, 0, canvas.width, canvas.height);
  const shown = drag ? (document.getElementById("add").checked ? pokes.concat([drag]) : [drag]) : pokes;
  context.strokeStyle = context.fillStyle = "rgb(255,40,40)"; context.lineWidth = 2;
  for (const [x, y, dx, dy] of shown.map(poke => poke.map(value => value * scale))) {
    context.beginPath(); context.moveTo(x, y); context.lineTo(x + dx, y + dy);
    const length = Math.hypot(dx, dy), head = Math.min(9, length / 2), ux = dx / length, uy = dy / length;
    if (length > 2) {  // arrowhead
      context.moveTo(x + dx - head * (ux - 0.5 * uy), y + dy - head * (uy + 0.5 * ux)); context.lineTo(x + dx, y + dy);
      context.lineTo(x + dx - head * (ux + 0.5 * uy), y + dy - head * (uy - 0.5 * ux));
    }
    context.stroke();
    context.beginPath(); context.arc(x, y, 3, 0, 2 * Math.PI); context.fill();
  }
}
function modelPoint(event) {
  const box = canvas.getBoundingClientRect();  // includes the border; clientLeft/Width do not
  return [(event.clientX - box.left - canvas.clientLeft) * info.size / canvas.clientWidth,
          (event.clientY - box.top - canvas.clientTop) * info.size / canvas.clientHeight];
}
function showImage() {
  pokes = []; shown = null; document.getElementById("samples").innerHTML = "";
  document.getElementById("which").textContent = `image ${image + 1} of ${info.images}`;
  picture.onload = draw; picture.src = `/api/image/${image}.png`;
}
// What is asked for now; a request answers it only if nothing changed while it was out.
const state = () => ({image, pokes: pokes.map(poke => poke.slice()), seed, temperature: temperature()});
let shown = null;  // the request whose samples are on screen (what "save" writes)
async function sample() {
  // One request at a time. A poke, key or image change while one is out is not dropped: when the answer comes
  // back it is discarded (it no longer matches what is on the canvas) and the latest state is sampled instead.
  if (busy) return;
  busy = true;
  try {
    while (pokes.length) {
      const request = state();
      status("sampling...");
      let result = null, failure = null;
      try { result = await call("/api/poke", request); } catch (error) { failure = error; }
      if (JSON.stringify(request) !== JSON.stringify(state())) continue;
      if (failure) { status("error: " + failure.message); break; }
      const box = document.getElementById("samples"); box.innerHTML = "";
      for (const gif of result.gifs) {
        const element = document.createElement("img");
        element.src = "data:image/gif;base64," + gif; box.appendChild(element);
      }
      shown = request;
      status(`${result.gifs.length} samples for ${request.pokes.length} poke(s), seed ${request.seed}, ` +
             `temperature ${request.temperature}, ${result.milliseconds} ms`);
      break;
    }
  } finally { busy = false; }
}
canvas.addEventListener("pointerdown", event => {
  const [x, y] = modelPoint(event); drag = [x, y, 0, 0]; canvas.setPointerCapture(event.pointerId); draw();
});
canvas.addEventListener("pointermove", event => {
  if (!drag) return; const [x, y] = modelPoint(event); drag[2] = x - drag[0]; drag[3] = y - drag[1]; draw();
});
canvas.addEventListener("pointerup", event => {
  if (!drag) return;
  const [x, y] = modelPoint(event); drag[2] = x - drag[0]; drag[3] = y - drag[1];
  const poke = drag; drag = null;
  if (Math.hypot(poke[2], poke[3]) * canvas.clientWidth / info.size < 3) {
    status("that was a click: drag to give the poke a direction and a length"); draw(); return;
  }
  pokes = document.getElementById("add").checked ? pokes.concat([poke]) : [poke]; draw(); sample();
});
const actions = {
  p: () => { image = (image + info.images - 1) % info.images; showImage(); },
  n: () => { image = (image + 1) % info.images; showImage(); },
  r: () => { seed += 1; sample(); },
  a: () => { const box = document.getElementById("add"); box.checked = !box.checked; },
  c: () => { pokes = []; shown = null; document.getElementById("samples").innerHTML = ""; draw(); status("cleared"); },
  s: async () => {  // the samples on screen, not a newer poke or seed still being sampled
    if (!shown) { status("nothing to save yet: poke first"); return; }
    try { status("saved to " + (await call("/api/save", shown)).folder); }
    catch (error) { status("error: " + error.message); }
  },
};
for (const [key, id] of [["p", "prev"], ["n", "next"], ["r", "again"], ["c", "clear"], ["s", "save"]])
  document.getElementById(id).addEventListener("click", actions[key]);
document.addEventListener("keydown", event => {
  if (actions[event.key] && !event.ctrlKey && !event.metaKey && event.target.id !== "temperature") actions[event.key]();
});
call("/api/info").then(result => {
  info = result; canvas.width = canvas.height = 256; showImage();
  status(`drag on the image to poke; ${info.samples} samples per poke`);
}).catch(error => status("error: " + error.message));
</script></body></html>
"""

__all__ = ["PAGE", "PokeApp", "PokeRequestError", "make_server", "serve"]
