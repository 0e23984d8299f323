"""Fair serving, measured side by side in one run: Gradio's plain queue as the page used it
before (first come first served, one model slot, at most 64 queued) against explorer/serving.py
(one model run in flight per page, two slots, fair placement, 1024 queued).

For each, with the shipped model (or the untrained `small` one, same architecture):
1. another page's example run alone, then while one page floods 1600x1200 uploads from
   12 threads (tests/flood_client.py, its own process at 5 nice levels below this one, standing
   for another machine), medians of 3;
2. 90 pages joining the queue at once (one example run each): how many got "Queue is full"
   (the joins are then cancelled, nothing runs).

    python bench/serving.py
"""
from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

import app  # noqa: E402
from explorer import serving  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(before: bool):
    lm = app.startup_model(app.parse_args([])) if app.DEFAULT_CHECKPOINT.exists() else app.random_model(0)
    demo = app.build_demo(lm)
    if before:
        serving.uninstall(demo)
        demo._queue.max_size = 64
        for fn in demo.fns.values():
            if fn.concurrency_id == serving.MODEL_QUEUE:
                fn.concurrency_limit = 1
    port = free_port()
    demo.launch(**app.launch_kwargs(server_port=port, prevent_thread_lock=True, quiet=True))
    return demo, f"http://127.0.0.1:{port}/"


def example_runs(client, n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        client.predict(f"synthetic_0{i % 5}.png", 0.3, api_name="/detect_example")
        out.append(time.perf_counter() - t0)
    return out


async def join_at_once(url: str, fn_index: int, n: int) -> list[tuple[int, str, str, str]]:
    """n pages (session hashes) join the queue at once -> (status, detail, session, event id)."""
    import httpx

    async with httpx.AsyncClient(timeout=60) as c:
        async def one():
            session = uuid.uuid4().hex
            r = await c.post(url + "gradio_api/queue/join", json={
                "data": ["synthetic_00.png", 0.3, None], "fn_index": fn_index, "session_hash": session})
            body = r.json()
            return r.status_code, str(body.get("detail", "")), session, body.get("event_id", "")
        rows = await asyncio.gather(*(one() for _ in range(n)))
        for status, _, session, event in rows:  # nothing is left to run
            if status == 200:
                await c.post(url + "gradio_api/cancel", json={"session_hash": session, "fn_index": fn_index,
                                                             "event_id": event})
        return rows


def measure(before: bool, upload: Path) -> dict:
    from gradio_client import Client

    demo, url = serve(before)
    try:
        b = Client(url, verbose=False)
        example_runs(b, 1)  # warm-up
        alone = example_runs(b, 3)
        # The flooding page stands for another machine: a little below this process's priority.
        flood = subprocess.Popen([sys.executable, str(ROOT / "tests" / "flood_client.py"), url, str(upload), "12"],
                                 stdout=subprocess.PIPE, text=True, preexec_fn=lambda: os.nice(5))
        flood.stdout.readline()
        t0 = time.time()  # in full swing: the queue holds the flood's uploads, or has refused them
        while (len(demo._queue) if before else sum(demo.admission.refused.values())) < 11 and time.time() - t0 < 120:
            time.sleep(0.2)
        loaded = example_runs(b, 3)
        flood.terminate()
        try:
            counts = flood.communicate(timeout=60)[0].strip()
        finally:
            flood.kill()
        fn_index = next(i for i, fn in demo.fns.items() if fn.api_name == "detect_example")
        rows = asyncio.run(join_at_once(url, fn_index, 90))
        return dict(alone=alone, loaded=loaded, flood=counts,
                    full=sum("Queue is full" in d for _, d, _, _ in rows),
                    refused=sum(s != 200 for s, _, _, _ in rows))
    finally:
        demo.close()


def main() -> None:
    torch.set_num_threads(1)  # the server shares 2 cores with the flooding client
    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    upload = tmp / "large.jpg"
    Image.open(ROOT / "examples" / "synthetic" / "synthetic_00.png").convert("RGB").resize((1600, 1200)).save(
        upload, quality=92)
    res = {name: measure(name == "before", upload) for name in ("before", "after")}
    for name, r in res.items():
        med = statistics.median
        print(f"{name:6s}: example alone {med(r['alone']):.2f} s, while one page floods uploads "
              f"{med(r['loaded']):.2f} s median (max {max(r['loaded']):.2f} s; flood {r['flood']}); "
              f"90 pages at once: {r['full']} 'Queue is full', {r['refused']} refused in all")
    b, a = res["before"], res["after"]
    print(f"example while flooded / alone: before {statistics.median(b['loaded']) / statistics.median(b['alone']):.1f}x, "
          f"after {statistics.median(a['loaded']) / statistics.median(a['alone']):.1f}x; "
          f"after vs before while flooded: {statistics.median(b['loaded']) / statistics.median(a['loaded']):.1f}x faster")


if __name__ == "__main__":
    main()
