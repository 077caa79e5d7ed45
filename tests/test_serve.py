"""The reward server (launch.serve) on the tiny reward model: scores equal launch.score's, bad input is a 4xx naming
the field while the server keeps serving, the bearer token, SIGTERM draining, and the client and its adapter."""

from __future__ import annotations

import base64
import hashlib
import http.client
import http.server
import io
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import PIL.Image
import pytest

from editreward_jax import model_dir
from editreward_jax.client import RewardClient, RewardServerError, make_reward_fn

pytest.importorskip("uvicorn", reason="the server needs the [serve] extra")  # installed by .ci/run
pytest.importorskip("starlette", reason="the server needs the [serve] extra")
from editreward_jax.serving import app as serving_app
from editreward_jax.serving.protocol import RequestError
from launch import score as launch_score
from subprocess_run import script_env
from test_scoring import _png_claiming

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY_ENV, KEY = "EDITREWARD_TEST_KEY", "s3cret-token"
SIZES = [(56, 56), (112, 112), (70, 100), (96, 64), (112, 56), (80, 80)]


def _png(rng, width, height) -> bytes:
  buffer = io.BytesIO()
  PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, "PNG")
  return buffer.getvalue()


def b64(data: bytes) -> str:
  return base64.b64encode(data).decode()


class Server:
  """launch.serve in a subprocess on a free localhost port, ready (warm-up done) when constructed."""

  def __init__(self, checkpoint, *flags, env=None):
    self.log = open(os.path.join(os.path.dirname(checkpoint), f"serve-{time.monotonic_ns()}.log"), "w+")
    self.proc = subprocess.Popen([sys.executable, "-m", "launch.serve", f"--checkpoint={checkpoint}", "--port=0",
                                  *flags], cwd=REPO, env=script_env(**(env or {})), stdout=subprocess.PIPE,
                                 stderr=self.log, text=True)
    line = self.proc.stdout.readline()
    assert line.startswith("listening on http://127.0.0.1:"), line + self.stderr()
    self.port = int(line.split(":")[2].split()[0])
    self.url = f"http://127.0.0.1:{self.port}"
    deadline = time.monotonic() + 180
    while request(self.port, "GET", "/health")[0] != 200:
      assert self.proc.poll() is None and time.monotonic() < deadline, self.stderr()
      time.sleep(0.2)

  def stderr(self) -> str:
    self.log.seek(0)
    return self.log.read()[-3000:]

  def stop(self):
    if self.proc.poll() is None:
      self.proc.kill()
      self.proc.wait()
    self.log.close()


def request(port, method, path, body=None, token=None, headers=None, timeout=120):
  """(status, JSON body or None); a refused connection is status 0."""
  conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
  hdrs = dict(headers or {})
  if token:
    hdrs["Authorization"] = f"Bearer {token}"
  try:
    conn.request(method, path, body=body, headers=hdrs)
    response = conn.getresponse()
    data = response.read()
  except ConnectionRefusedError:
    return 0, None
  finally:
    conn.close()
  try:
    return response.status, json.loads(data)
  except ValueError:
    return response.status, None


def score(port, items, token=KEY):
  return request(port, "POST", "/score", json.dumps({"items": items}), token=token)


@pytest.fixture(scope="module")
def images():
  rng = np.random.default_rng(0)
  return [(_png(rng, w, h), _png(rng, h, w)) for w, h in SIZES]


@pytest.fixture(scope="module")
def server(reward_dir):
  """The shared server: a bearer token required, no file paths, small limits to test against."""
  s = Server(reward_dir, "--max_batch=4", "--max_items=8", "--max_body_bytes=1000000", f"--api_key_env={KEY_ENV}",
             env={KEY_ENV: KEY})
  yield s
  s.stop()


def good_item(images, i=0, item_id="ok"):
  return {"id": item_id, "instruction": f"make square {i} red", "source_image": b64(images[i][0]),
          "edited_image": b64(images[i][1])}


def assert_serving(server, images):
  status, out = score(server.port, [good_item(images)])
  assert status == 200 and [r["id"] for r in out["results"]] == ["ok"] and not out["errors"], out


def test_scores_equal_launch_score(server, images, reward_dir, tmp_path):
  rows = []
  for i, (src, edit) in enumerate(images):
    (tmp_path / f"src{i}.png").write_bytes(src)
    (tmp_path / f"edit{i}.png").write_bytes(edit)
    rows.append({"id": f"e{i}", "instruction": f"make square {i} red", "source_image": f"src{i}.png",
                 "edited_image": f"edit{i}.png"})
  rows.append({**rows[0], "id": "shared_source", "edited_image": "edit3.png"})
  (tmp_path / "edits.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  launch_score.run(reward_dir, str(tmp_path / "edits.jsonl"), str(tmp_path / "scores.jsonl"))
  expected = {r["id"]: r for r in map(json.loads, (tmp_path / "scores.jsonl").read_text().splitlines())}

  items = [{**r, "source_image": b64((tmp_path / r["source_image"]).read_bytes()),
            "edited_image": b64((tmp_path / r["edited_image"]).read_bytes())} for r in rows]
  # 7 edits in two concurrent requests: batches of up to 4 mix the requests and one request spans batches
  out = [None, None]
  threads = [threading.Thread(target=lambda k, part: out.__setitem__(k, score(server.port, part)), args=(k, part))
             for k, part in enumerate((items[:5], items[5:]))]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  got = {}
  for status, body in out:
    assert status == 200 and not body["errors"], body
    got.update({r["id"]: r for r in body["results"]})
  assert list(got) == [r["id"] for r in rows]
  for row_id, want in expected.items():
    assert set(got[row_id]) == set(want)
    for key in ("mu", "log_sigma"):
      assert abs(got[row_id][key] - want[key]) <= 1e-6, (row_id, key)
      for d in ("instruction_following", "visual_quality"):
        assert abs(got[row_id][d][key] - want[d][key]) <= 1e-6, (row_id, d, key)
  assert len({round(r["mu"], 6) for r in got.values()}) == len(got)  # the images reach the scores


def _truncated(images):
  return images[1][1][:len(images[1][1]) // 2]


BAD_ITEMS = [  # (case, item overrides, status, field)
    ("missing_instruction", {"instruction": None}, 422, "instruction"),
    ("empty_instruction", {"instruction": "  "}, 422, "instruction"),
    ("invalid_base64", {"source_image": "iVBORw0KGgo$$notbase64"}, 422, "source_image"),
    ("truncated_image", {"edited_image": lambda im: b64(_truncated(im))}, 422, "edited_image"),
    ("huge_header", {"source_image": lambda im: b64(_png_claiming(30000, 30000))}, 422, "source_image"),
    ("not_an_image", {"edited_image": b64(b"GIF89a" + bytes(64))}, 422, "edited_image"),
    ("path_not_allowed", {"source_image": {"path": "/etc/hostname"}}, 422, "source_image"),
    ("image_not_a_string", {"edited_image": 12}, 422, "edited_image"),
]


@pytest.mark.parametrize("case, overrides, status, field", BAD_ITEMS, ids=[c[0] for c in BAD_ITEMS])
def test_bad_item_is_a_4xx_naming_the_field(server, images, case, overrides, status, field):
  item = good_item(images, item_id=case)
  for key, value in overrides.items():
    item[key] = value(images) if callable(value) else value
    if value is None:
      del item[key]
  got, out = score(server.port, [item])
  assert got == status and out["results"] == [], out
  assert [(e["id"], e["field"]) for e in out["errors"]] == [(case, field)], out
  assert out["errors"][0]["message"]
  assert_serving(server, images)


BAD_REQUESTS = [  # (case, body, status, field)
    ("malformed_json", b'{"items": [', 400, "body"),
    ("not_an_object", b"[1, 2]", 400, "body"),
    ("no_items", b'{"edits": []}', 400, "items"),
    ("missing_id", json.dumps({"items": [{"instruction": "x"}]}).encode(), 400, "items[0].id"),
    ("duplicate_id", json.dumps({"items": [{"id": 1}, {"id": 1}]}).encode(), 400, "items[1].id"),
    ("too_many_items", json.dumps({"items": [{"id": i} for i in range(9)]}).encode(), 413, "items"),
]


@pytest.mark.parametrize("case, body, status, field", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_request_is_a_4xx_naming_the_field(server, images, case, body, status, field):
  got, out = request(server.port, "POST", "/score", body, token=KEY)
  assert got == status and [e["field"] for e in out["errors"]] == [field], out
  assert_serving(server, images)


def test_a_body_over_the_limit_is_refused_before_it_is_read(server, images):
  with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
    sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: 50000000\r\n\r\n{\"items\"")
    reply = b""
    while chunk := sock.recv(65536):
      reply += chunk
  head, _, body = reply.partition(b"\r\n\r\n")
  assert head.startswith(b"HTTP/1.1 413"), reply[:300]
  assert json.loads(body)["errors"][0]["field"] == "body"
  assert_serving(server, images)


def test_a_streamed_body_is_cut_at_the_limit():
  class FakeRequest:  # a chunked upload without Content-Length: the cap applies while streaming
    headers, pulled = {}, 0

    async def stream(self):
      for _ in range(100):
        FakeRequest.pulled += 1
        yield b"x" * 1000

  import asyncio
  with pytest.raises(RequestError) as e:
    asyncio.run(serving_app.read_body(FakeRequest(), 2500))
  assert e.value.status == 413 and e.value.field == "body" and FakeRequest.pulled == 3


@pytest.mark.parametrize("token", [None, "wrong-token", KEY + "x"])
def test_the_token_is_required(server, images, token):
  status, out = score(server.port, [good_item(images)], token=token)
  assert status == 401 and out["errors"][0]["field"] == "authorization", out
  assert request(server.port, "GET", "/info", token=token)[0] == 401
  assert_serving(server, images)


def test_a_partly_bad_request_scores_the_good_items(server, images):
  bad = {**good_item(images, 2, "bad"), "edited_image": b64(_truncated(images))}  # fails while decoding
  worse = {**good_item(images, 4, "worse"), "source_image": "not base64!"}  # fails while parsing
  status, out = score(server.port, [good_item(images, 1, "a"), bad, worse, good_item(images, 3, "b")])
  assert status == 200 and [r["id"] for r in out["results"]] == ["a", "b"], out
  assert [(e["id"], e["field"]) for e in out["errors"]] == [("bad", "edited_image"), ("worse", "source_image")]


def test_health_and_info(server, reward_dir):
  assert request(server.port, "GET", "/health") == (200, {"status": "ready", "in_flight": 0})
  status, info = request(server.port, "GET", "/info", token=KEY)
  meta = model_dir.resolve(reward_dir)
  prompts = json.dumps(meta.prompts().to_dict(), sort_keys=True, ensure_ascii=False)
  assert status == 200 and info["prompts_sha256"] == hashlib.sha256(prompts.encode()).hexdigest()
  assert (info["rope_mode"], info["fusion"]) == ("sequential", "mean")
  assert info["pixels"] == {"min": 56 * 56, "max": 112 * 112} and info["edit_buckets"] == [1, 2, 4]
  assert {b["edits"] for b in info["compiled"]} == {1, 2, 4} and info["version"] == "0.1.0"
  assert info["model"]["text"]["hidden_size"] == meta.model.text.hidden_size


def test_client_and_reward_fn(server, images):
  client = RewardClient(server.url, api_key=KEY, retries=0)
  pil = [PIL.Image.open(io.BytesIO(edit)) for _, edit in images[:3]]
  arrays = [np.asarray(im) for im in pil]
  sources = [src for src, _ in images[:3]]
  direct = score(server.port, [good_item(images, i, i) for i in range(3)])[1]["results"]
  for edited in (pil, arrays, np.stack([a.transpose(2, 0, 1) / 255.0 for a in arrays[:1]])):  # last: NCHW floats
    n = len(edited)
    got = client.score([{"id": i, "instruction": f"make square {i} red", "source_image": sources[i],
                         "edited_image": edited[i]} for i in range(n)])
    assert got["errors"] == [] and [r["id"] for r in got["results"]] == list(range(n))
    for r, want in zip(got["results"], direct):
      assert abs(r["mu"] - want["mu"]) <= 1e-6
  reward_fn = make_reward_fn(client)
  metadata = [{"source_image": PIL.Image.open(io.BytesIO(s))} for s in sources] + [{"source_image": b"not png"}]
  scores, info = reward_fn(arrays + [arrays[0]], [f"make square {i} red" for i in range(3)] + ["x"], metadata)
  assert len(scores) == 4 and all(abs(s - w["mu"]) <= 1e-6 for s, w in zip(scores, direct))
  assert math.isnan(scores[3]) and [(e["id"], e["field"]) for e in info["errors"]] == [(3, "source_image")]
  assert abs(info["visual_quality"][0] - direct[0]["visual_quality"]["mu"]) <= 1e-6
  with pytest.raises(RewardServerError) as e:  # a 4xx is raised at once, naming the field
    RewardClient(server.url, api_key="wrong").score([{"id": 0, "instruction": "x", "source_image": sources[0],
                                                      "edited_image": sources[0]}])
  assert e.value.status == 401 and "authorization" in str(e.value)


class _Flaky(http.server.BaseHTTPRequestHandler):
  statuses: list[int] = []
  seen = 0

  def do_POST(self):
    type(self).seen += 1
    status = self.statuses.pop(0)
    body = json.dumps({"results": [], "errors": [{"id": None, "field": "server", "message": "busy"}]}).encode()
    self.send_response(status)
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    self.wfile.write(body)

  def log_message(self, *args):
    pass


@pytest.mark.parametrize("statuses, expect_seen, ok", [([503, 500, 200], 3, True), ([400], 1, False),
                                                       ([503, 503, 503], 3, False)])
def test_client_retries_5xx_not_4xx(statuses, expect_seen, ok):
  _Flaky.statuses, _Flaky.seen = list(statuses), 0
  httpd = http.server.HTTPServer(("127.0.0.1", 0), _Flaky)
  threading.Thread(target=httpd.serve_forever, daemon=True).start()
  client = RewardClient(f"http://127.0.0.1:{httpd.server_port}", retries=2, backoff_s=0.01)
  try:
    if ok:
      assert client.score([{"id": 0, "instruction": "x", "source_image": b"a", "edited_image": b"b"}]) == \
          {"results": [], "errors": [{"id": None, "field": "server", "message": "busy"}]}
    else:
      with pytest.raises(RewardServerError):
        client.score([{"id": 0, "instruction": "x", "source_image": b"a", "edited_image": b"b"}])
  finally:
    httpd.shutdown()
    httpd.server_close()
  assert _Flaky.seen == expect_seen


def test_client_retries_connection_errors():
  with socket.socket() as s:  # a port nobody listens on
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  start = time.monotonic()
  with pytest.raises(RewardServerError, match="after 3 attempts"):
    RewardClient(f"http://127.0.0.1:{port}", retries=2, backoff_s=0.05).info()
  assert time.monotonic() - start >= 0.15  # backed off 0.05 + 0.1 s


@pytest.mark.parametrize("flags, message", [
    (["--host=0.0.0.0"], "--host=0.0.0.0 is not localhost: give --api_key_env"),
    (["--host=0.0.0.0", "--api_key_env=EDITREWARD_UNSET_KEY"], "EDITREWARD_UNSET_KEY is not set"),
])
def test_refuses_to_start_without_a_token_off_localhost(reward_dir, flags, message):
  run = subprocess.run([sys.executable, "-m", "launch.serve", f"--checkpoint={reward_dir}", *flags], cwd=REPO,
                       env=script_env(), capture_output=True, text=True, timeout=120)
  assert run.returncode == 1 and run.stderr.strip().splitlines() == [run.stderr.strip()], run.stderr
  assert run.stderr.startswith("error: ") and message in run.stderr


def test_a_failed_warm_up_stops_the_server_with_one_line(reward_dir):
  run = subprocess.run([sys.executable, "-m", "launch.serve", f"--checkpoint={reward_dir}", "--port=0",
                        "--max_batch=1", "--max_seq_len=16"], cwd=REPO, env=script_env(), capture_output=True,
                       text=True, timeout=120)
  assert run.returncode == 1, run.stderr
  last = run.stderr.strip().splitlines()[-1]
  assert last.startswith("error: the warm-up (compiling the batch buckets) failed: ") and "max_seq_len=16" in last


@pytest.mark.slow
def test_sigterm_finishes_in_flight_requests_refuses_new_ones_and_exits_0(reward_dir, images, tmp_path):
  for i, (src, _) in enumerate(images):
    (tmp_path / f"src{i}.png").write_bytes(src)
  s = Server(reward_dir, "--max_batch=1", f"--allow_paths={tmp_path}")
  try:
    # with --allow_paths a path scores as its bytes do
    by_path = score(s.port, [{**good_item(images, 2), "source_image": {"path": str(tmp_path / "src2.png")}}])
    by_bytes = score(s.port, [good_item(images, 2)])
    assert by_path[0] == 200 and by_path[1]["results"] == by_bytes[1]["results"], by_path
    outside = score(s.port, [{**good_item(images, 2), "source_image": {"path": "/etc/hostname"}}])
    assert outside[0] == 422 and outside[1]["errors"][0]["field"] == "source_image"

    out = {}
    def send(k):
      out[k] = score(s.port, [good_item(images, i, f"{k}-{i}") for i in range(len(images))])
    threads = [threading.Thread(target=send, args=(k,)) for k in range(4)]
    for t in threads:
      t.start()
    deadline = time.monotonic() + 60
    while request(s.port, "GET", "/health")[1]["in_flight"] < 4:
      assert time.monotonic() < deadline
      time.sleep(0.01)
    s.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    status, body = score(s.port, [good_item(images)])
    assert status == 503 and body["errors"][0]["field"] == "server", body  # new requests refused while draining
    assert request(s.port, "GET", "/health")[0] == 503
    for t in threads:
      t.join(120)
    assert s.proc.wait(120) == 0, s.stderr()
    for k in range(4):  # every in-flight request finished, every item answered
      status, body = out[k]
      assert status == 200 and not body["errors"]
      assert [r["id"] for r in body["results"]] == [f"{k}-{i}" for i in range(len(images))]
    assert score(s.port, [good_item(images)])[0] == 0  # closed
  finally:
    s.stop()


def test_the_readme_client_snippet_runs_against_the_server(server, images, tmp_path, monkeypatch):
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    readme = f.read()
  section = readme[readme.index("## Reward server"):]
  snippets = re.findall(r"```py\n(.*?)```", section[:section.index("\n## ", 3)], re.S)
  assert len(snippets) == 1 and 'RewardClient("http://127.0.0.1:8000"' in snippets[0]
  code = snippets[0].replace('RewardClient("http://127.0.0.1:8000"', f'RewardClient("{server.url}", api_key="{KEY}"')
  (tmp_path / "source.png").write_bytes(images[0][0])
  (tmp_path / "edited.png").write_bytes(images[0][1])
  monkeypatch.chdir(tmp_path)
  namespace = {}
  exec(compile(code, "README.md reward server snippet", "exec"), namespace)
  want = score(server.port, [{**good_item(images), "instruction": "make the sky pink"}])[1]["results"][0]["mu"]
  assert abs(namespace["out"]["results"][0]["mu"] - want) <= 1e-6 and abs(namespace["scores"][0] - want) <= 1e-6
