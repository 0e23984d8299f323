"""Load: 8 clients at once, each running 10 detect-and-explore sequences against one server.

Checks that nothing fails, that every response belongs to the client that asked (each client
has its own image: its name and size must come back), and that memory stays bounded; the
peak is written to the test's temporary folder (load.json), not into the checkout.
"""
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("gradio_client")
psutil = pytest.importorskip("psutil")
from gradio_client import Client, handle_file  # noqa: E402

import app  # noqa: E402
from ddetr.data.synthetic import SceneParams, render_scene  # noqa: E402

CLIENTS, SEQUENCES = 8, 10
MAX_BYTES = 96 << 20  # the session store's budget in this test (smaller than a server's)

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]


def test_eight_clients_at_once(tmp_path):
    torch.set_num_threads(2)
    images = {}
    for k in range(CLIENTS):
        img, _ = render_scene(500 + k, SceneParams(min_size=200 + 8 * k, max_size=200 + 8 * k + 40))
        path = tmp_path / f"client{k}.png"
        img.save(path)
        images[k] = (path, img.size)
    demo = app.build_demo(app.random_model(0), examples={"synthetic": {}, "photos": {}}, max_bytes=MAX_BYTES,
                          threshold=0.0)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo.launch(**app.launch_kwargs(server_port=port, prevent_thread_lock=True, quiet=True))
    url = f"http://127.0.0.1:{port}/"
    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    peak = {"rss": rss0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak["rss"] = max(peak["rss"], proc.memory_info().rss)
            time.sleep(0.05)

    def run(k: int) -> list[float]:
        path, (w, h) = images[k]
        c = Client(url, verbose=False)
        durations = []
        for i in range(SEQUENCES):
            t0 = time.perf_counter()
            r = c.predict(handle_file(str(path)), 0.0, api_name="/detect")
            assert f"client{k}.png" in r[3] and f"{w}x{h} px" in r[3], (k, i, r[3])
            shown = Image.open(r[0]).size
            assert abs(shown[0] / shown[1] - w / h) < 0.02, (k, shown, (w, h))
            n = len(r[2]["choices"])
            r = c.predict(i % n, api_name="/select_detection")
            assert f"client{k}.png" in r[3] and f"detection #{i % n}" in r[3], (k, i, r[3])
            r = c.predict(w / 3, h / 2, api_name="/click_pixel")
            assert f"client{k}.png" in r[3] and f"({w / 3:.0f}, {h / 2:.0f})" in r[3], (k, i, r[3])
            r = c.predict(i % 3, [i % 8], [0, 1, 2, 3], "weight", 0, "merged", i % 4, api_name="/set_view")
            assert f"client{k}.png" in r[3] and f"encoder layer {i % 3}" in r[3], (k, i, r[3])
            durations.append(time.perf_counter() - t0)
        c.close()
        return durations

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            results = list(pool.map(run, range(CLIENTS)))  # re-raises any client's failure
    finally:
        stop.set()
        sampler.join()
        wall = time.perf_counter() - t0
        demo.close()
    store = demo.explorer.store
    seq = np.concatenate(results)
    report = {
        "clients": CLIENTS, "sequences_per_client": SEQUENCES, "wall_s": round(wall, 1),
        "sequence_s_median": round(float(np.median(seq)), 2), "sequence_s_max": round(float(seq.max()), 2),
        "rss_start_mb": rss0 >> 20, "rss_peak_mb": peak["rss"] >> 20, "rss_growth_mb": (peak["rss"] - rss0) >> 20,
        "store_peak_mb": round(store.peak_bytes / 2**20, 1), "store_budget_mb": MAX_BYTES >> 20,
        "sessions_evicted": store.evicted, "server_timings": demo.explorer.timings.summary(),
    }
    (tmp_path / "load.json").write_text(json.dumps(report, indent=2))
    # Bounded: the store never holds more than its budget plus the capture being added, and the
    # process grows by far less than 8 clients x 10 images of captures would take if kept.
    one_capture = max(s.nbytes for s in store._items.values()) if len(store) else 0
    assert store.peak_bytes <= MAX_BYTES + one_capture
    assert peak["rss"] - rss0 < 1500 << 20
