"""Fair and safe serving (explorer/serving.py, explorer/cli.py).

The rules alone (admission, fair placement, file objects, path scrubbing, accounts, the host
warning), then one explorer server with the shipped model behind a login, driven as users and
attackers would: a page flooding uploads while another runs an example, 90 pages at once, a
``url`` payload, a user error and a bug.
"""
import asyncio
import http.server
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

pytest.importorskip("gradio_client")
import gradio as gr  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

import app  # noqa: E402
from explorer import cli, serving  # noqa: E402
from explorer.serving import Limits, Request, fair_position, file_refusal, refusal, scrub_paths  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]
ROOT = Path(__file__).resolve().parent.parent
USER, PASSWORD = "tester", "pa:ss-word"  # a ':' in the password: only the first one separates


# ----------------------------------------------------------------------------- the rules
def test_a_page_may_have_one_model_run_in_flight():
    lim = Limits(model_runs_per_session=1, model_runs_per_address=3, events_per_session=4)
    a_run, b_view = Request("a", "1.1.1.1", True), Request("b", "1.1.1.1", False)
    assert refusal(lim, Request("a", "1.1.1.1", True), []) is None
    assert "previous image" in refusal(lim, Request("a", "1.1.1.1", True), [a_run])
    assert refusal(lim, Request("a", "1.1.1.1", False), [a_run]) is None  # views still work meanwhile
    assert refusal(lim, Request("b", "1.1.1.1", True), [a_run, b_view]) is None
    others = [Request(s, "1.1.1.1", True) for s in "cde"]
    assert "network address" in refusal(lim, Request("f", "1.1.1.1", True), others)
    assert refusal(lim, Request("f", "2.2.2.2", True), others) is None
    assert "requests waiting" in refusal(lim, Request("b", "3.3.3.3", False), [b_view] * 4)


def test_fair_position_puts_a_first_request_before_second_ones():
    a, b, c = (Request(s, "1.1.1.1", True) for s in "abc")
    x = Request("x", "9.9.9.9", True)
    # a is running and has one waiting: b's first request goes before a's second
    assert fair_position(b, running=[a], waiting=[a]) == 0
    # among equals the order of arrival holds
    assert fair_position(c, running=[], waiting=[a, b]) == 2
    # one address with many pages: another address's first request goes first
    assert fair_position(x, running=[a], waiting=[b, c]) == 0
    assert fair_position(a, running=[], waiting=[]) == 0


def test_file_objects_must_be_uploads(tmp_path):
    up = tmp_path / "uploads"
    (up / "h").mkdir(parents=True)
    f = up / "h" / "cat.png"
    f.write_bytes(b"x")
    own = f"http://127.0.0.1:7860/gradio_api/file={f}"
    assert file_refusal([{"path": str(f), "url": own, "meta": {"_type": "gradio.FileData"}}, 0.3, None], up) is None
    assert file_refusal([{"path": str(f)}], up) is None
    assert file_refusal(["synthetic_00.png", 0.3, {"x": [1, 2]}], up) is None  # no file objects at all
    bad = [{"path": "http://127.0.0.1:9/x.png"}, {"url": "http://127.0.0.1:9/x.png"},
           {"path": str(f), "url": "http://127.0.0.1:9/x.png"}, {"path": str(tmp_path / "secret.png")},
           {"path": str(up / ".." / "secret.png")}, {"path": "file:///etc/passwd"}, {"path": None}]
    for obj in bad:
        assert file_refusal([[obj], 0.3], up) == serving.NOT_UPLOADED, obj


def test_scrub_paths_leaves_file_names():
    cwd = os.getcwd()
    assert scrub_paths(f"cannot load {ROOT}/examples/default_model.safetensors: bad") == \
        "cannot load default_model.safetensors: bad"
    assert scrub_paths(f"in {cwd}.") == f"in {Path(cwd).name}."
    assert scrub_paths("open 'C:\\Users\\me\\ckpt.pth' failed") == "open 'ckpt.pth' failed"
    kept = "see https://github.com/x/y/issues/1, runs/small/model.safetensors, 1/2 of 3, and/or"
    assert scrub_paths(kept) == kept


def test_guarded_logs_user_errors_as_one_line_and_bugs_with_traceback(caplog):
    secret = f"{ROOT}/examples/secret.pth"

    def user_mistake():
        raise ValueError(f"cannot open {secret}:\nnot a checkpoint")

    def bug():
        raise RuntimeError(f"boom in {secret}")

    with caplog.at_level(logging.INFO, logger="ddetr.app"):
        with pytest.raises(gr.Error) as e:
            serving.guarded(user_mistake)()
        assert str(ROOT) not in e.value.message and "secret.pth" in e.value.message
        assert e.value.print_exception is False
        (rec,) = caplog.records
        assert rec.exc_info is None and "\n" not in rec.getMessage() and str(ROOT) not in rec.getMessage()
        caplog.clear()
        with pytest.raises(gr.Error) as e:
            serving.guarded(bug)()
        assert "Internal error" in e.value.message and str(ROOT) not in e.value.message
        (rec,) = caplog.records
        assert rec.exc_info is not None and rec.levelno == logging.ERROR


def test_accounts_from_the_command_line_and_a_file(tmp_path, capsys):
    assert serving.parse_account("ann:se:cret") == ("ann", "se:cret")
    for bad in ("ann", ":pw", "ann:", ""):
        with pytest.raises(serving.AccountError, match="USER:PASSWORD"):
            serving.parse_account(bad)
    f = tmp_path / "users.txt"
    f.write_text("# the class\nann:one\n\nbob:two:three\n")
    args = cli.parse_args(["--auth", "root:pw", "--auth-file", str(f)])
    assert args.credentials == [("root", "pw"), ("ann", "one"), ("bob", "two:three")]
    assert cli.launch_kwargs(args)["auth"] == args.credentials and cli.launch_kwargs(cli.parse_args([]))["auth"] is None
    f.write_text("ann:one\nbob\n")
    with pytest.raises(SystemExit):
        cli.parse_args(["--auth-file", str(f)])
    assert "line 2" in capsys.readouterr().err
    for path, why in ((tmp_path / "missing.txt", "cannot read"), (tmp_path, "cannot read")):
        with pytest.raises(SystemExit):
            cli.parse_args(["--auth-file", str(path)])
        assert why in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.parse_args(["--auth", "nopassword"])
    assert "USER:PASSWORD" in capsys.readouterr().err


def test_a_host_beyond_loopback_warns_and_says_how_to_require_a_login(monkeypatch, capsys):
    launched = {}

    class FakeDemo:  # main() without a model or a server: what it prints and passes to launch()
        explorer = SimpleNamespace(registry=SimpleNamespace(startup_name="m", get=lambda name: None))

        def launch(self, **kw):
            launched.update(kw)

    monkeypatch.setattr(cli, "make_demo", lambda args: FakeDemo())
    monkeypatch.setattr("explorer.status.plain_header", lambda lm: "header")
    for host in ("127.0.0.1", "localhost", "::1"):
        assert serving.exposure_warning(host, login=False) is None
    cli.main(["--host", "0.0.0.0"])
    err = capsys.readouterr().err
    assert "WARNING" in err and "--auth USER:PASSWORD" in err and "--auth-file" in err
    assert launched["server_name"] == "0.0.0.0" and launched["auth"] is None
    cli.main(["--host", "192.168.1.5", "--auth", "ann:pw"])
    err = capsys.readouterr().err
    assert "WARNING" not in err and "login is required" in err and launched["auth"] == [("ann", "pw")]


# ----------------------------------------------------------------------------- one real server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    """(url, demo) of the explorer with the shipped model, behind a login."""
    import torch

    if not cli.DEFAULT_CHECKPOINT.exists():
        pytest.skip("examples/default_model.safetensors is missing")
    threads = torch.get_num_threads()
    # One thread per forward: the server shares the 2 cores with the flooding client, and
    # OpenMP teams on a busy machine wait for their slowest thread.
    torch.set_num_threads(1)
    demo = app.build_demo(cli.startup_model(cli.parse_args([])))
    port = free_port()
    kw = cli.launch_kwargs(cli.parse_args(["--auth", f"{USER}:{PASSWORD}"]), server_port=port,
                           prevent_thread_lock=True, quiet=True)
    demo.launch(**kw)
    yield f"http://127.0.0.1:{port}/", demo
    demo.close()
    torch.set_num_threads(threads)


def client(server) -> Client:
    return Client(server[0], auth=(USER, PASSWORD), verbose=False)


def login(server, c):
    r = c.post(server[0] + "login", data={"username": USER, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return c


def refused_with(r, text: str) -> bool:
    """Refused at the queue's door the way Gradio's validators refuse (HTTP 422), saying ``text``."""
    return r.status_code == 422 and text in " ".join(m["message"] for m in r.json()["detail"])


def fn_index(demo, api_name: str) -> int:
    return next(i for i, fn in demo.fns.items() if fn.api_name == api_name)


def test_login_is_required(server):
    import httpx

    url, demo = server
    runs = demo.explorer.registry.get(demo.explorer.registry.startup_name).runs
    body = {"data": ["synthetic_00.png", 0.3, None], "fn_index": fn_index(demo, "detect_example"),
            "session_hash": uuid.uuid4().hex}
    assert httpx.post(url + "gradio_api/queue/join", json=body, timeout=30).status_code == 401
    assert httpx.post(url + "login", data={"username": USER, "password": "wrong"}, timeout=30).status_code == 400
    assert demo.explorer.registry.get(demo.explorer.registry.startup_name).runs == runs
    r = client(server).predict("synthetic_00.png", 0.3, api_name="/detect_example")
    assert "detection" in r[3]


@pytest.mark.slow
def test_an_example_stays_fast_while_another_page_floods_uploads(server, tmp_path):
    """Under 2 s where the example alone takes 0.5 s (the issue's machine; 39 s with Gradio's
    plain queue). The bound scales with the example's time alone, measured just before, so a
    machine busy with other work slows both sides alike; queueing behind the flood (36x the
    time alone, bench/serving.py) still fails it."""
    url, demo = server
    big = tmp_path / "large.jpg"
    Image.open(ROOT / "examples" / "synthetic" / "synthetic_00.png").convert("RGB").resize((1600, 1200)).save(big)
    b = client(server)

    def example_runs(names):
        out = []
        for name in names:
            t0 = time.perf_counter()
            b.predict(name, 0.3, api_name="/detect_example")
            out.append(time.perf_counter() - t0)
        return sorted(out)[len(out) // 2]

    example_runs(["synthetic_01.png"])  # this page's first call
    alone = example_runs(["synthetic_02.png", "synthetic_03.png", "synthetic_04.png"])
    refused = sum(demo.admission.refused.values())
    # The flooding page stands for another machine: a little below this process's CPU priority,
    # enough that its own client work does not dominate 2 shared cores (at +5 it still keeps 11
    # uploads waiting in Gradio's plain queue: bench/serving.py).
    flood = subprocess.Popen([sys.executable, str(ROOT / "tests" / "flood_client.py"), url, str(big), "12",
                              f"{USER}:{PASSWORD}"], stdout=subprocess.PIPE, text=True,
                             preexec_fn=lambda: os.nice(5))
    try:
        assert flood.stdout.readline().strip() == "flooding"
        t0 = time.time()  # in full swing: every thread has sent an upload (one runs, the rest were refused)
        while sum(demo.admission.refused.values()) - refused < 12 and time.time() - t0 < 120:
            time.sleep(0.2)
        flooded = example_runs(["synthetic_02.png", "synthetic_03.png", "synthetic_04.png"])
    finally:
        flood.terminate()
        try:
            counts = flood.communicate(timeout=60)[0]
        finally:
            flood.kill()
    assert flooded < 2.0 * max(1.0, alone / 0.5), (flooded, alone)
    assert "ok=" in counts and sum(demo.admission.refused.values()) - refused >= 12, (counts, demo.admission.refused)


def test_ninety_pages_at_once_are_all_queued(server):
    import httpx

    url, demo = server
    index = fn_index(demo, "detect_example")

    async def main():
        async with httpx.AsyncClient(timeout=60) as c:
            r = await c.post(url + "login", data={"username": USER, "password": PASSWORD})
            assert r.status_code == 200, r.text

            async def join(session):
                r = await c.post(url + "gradio_api/queue/join", json={
                    "data": ["synthetic_00.png", 0.3, None], "fn_index": index, "session_hash": session})
                return session, r.status_code, r

            rows = await asyncio.gather(*(join(uuid.uuid4().hex) for _ in range(90)))
            # The page at the back of the queue asks again (it cannot have started meanwhile): told at once.
            waiting = [e.session_hash for e in demo._queue.event_queue_per_concurrency_id[serving.MODEL_QUEUE].queue]
            again = await join(waiting[-1])
            for session, status, body in rows:  # nothing is left to run
                if status == 200:
                    await c.post(url + "gradio_api/cancel", json={"session_hash": session, "fn_index": index,
                                                                 "event_id": body.json()["event_id"]})
            return rows, again

    rows, again = asyncio.run(main())
    assert [s for _, s, _ in rows] == [200] * 90, [b.text for _, s, b in rows if s != 200][:3]
    assert refused_with(again[2], "previous image is still being processed")


class Counting(http.server.BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self):  # noqa: N802
        type(self).hits += 1
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"")

    def log_message(self, *a):
        pass


def test_model_endpoints_take_only_uploads_and_fetch_nothing(server, monkeypatch):
    import httpx

    from gradio import processing_utils

    url, demo = server
    fetches = []

    async def no_download(u, cache_dir):
        fetches.append(u)
        raise AssertionError("fetched " + u)

    monkeypatch.setattr(processing_utils, "async_ssrf_protected_download", no_download)
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Counting)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    there = f"http://127.0.0.1:{web.server_address[1]}/cat.png"
    meta = {"_type": "gradio.FileData"}
    try:
        with httpx.Client(timeout=30) as c:
            login(server, c)
            for payload in ({"url": there, "meta": meta}, {"path": there, "url": there, "meta": meta},
                            {"path": str(ROOT / "examples" / "synthetic" / "synthetic_00.png"), "meta": meta}):
                r = c.post(url + "gradio_api/call/detect", json={"data": [payload, 0.3]})
                assert refused_with(r, "only images uploaded through the page")
                assert str(ROOT) not in r.text
        with pytest.raises(Exception):  # gradio_client's handle_file(url): refused at the queue's door
            client(server).predict(handle_file(there), 0.3, api_name="/detect")
    finally:
        web.shutdown()
    assert fetches == [] and Counting.hits == 0


def test_errors_are_one_line_for_users_a_traceback_for_bugs_and_show_no_path(server, monkeypatch, caplog, capfd):
    import httpx

    url, demo = server
    c = client(server)
    with caplog.at_level(logging.INFO, logger="ddetr.app"):
        with pytest.raises(AppError, match="upload an image or pick an example") as e:
            c.predict(10, 10, api_name="/click")
        time.sleep(0.5)
    refused = [r for r in caplog.records if r.getMessage().startswith("click refused")]
    assert len(refused) == 1 and refused[0].exc_info is None
    assert "Traceback" not in capfd.readouterr().err
    caplog.clear()

    def broken(*a, **k):
        raise RuntimeError(f"cannot write {ROOT}/runs/cache.bin")

    monkeypatch.setattr(demo.explorer, "run", broken)
    with caplog.at_level(logging.INFO, logger="ddetr.app"):
        with pytest.raises(AppError, match="Internal error") as e:
            c.predict("synthetic_00.png", 0.3, api_name="/detect_example")
        time.sleep(0.5)
    assert str(ROOT) not in str(e.value) and "cache.bin" in str(e.value)
    assert any(r.exc_info is not None for r in caplog.records)  # the bug's traceback is in the log
    with httpx.Client(timeout=30) as h:
        config = login(server, h).get(url + "config").text
    assert "default_model.safetensors" in config and str(ROOT) not in config and os.getcwd() not in config

