"""`python app.py --device DEVICE` as a user starts it: the page is served, an example runs on
that device, a change of view and an upload work, the model's weights are where they should be.

Starts ``app.py`` in a subprocess (the shipped default model; ``--random-weights`` when it is
missing), waits for it to listen, then talks to it as the page does, through its API
(``gradio_client``): ``/detect_example`` (twice: the first includes the device's warm-up),
``/set_view``, ``/detect`` with an uploaded image. Prints each step's time and exits non-zero
with the server's last log lines when a step fails. ``bench/run_cuda_checks.sh`` runs it with
``--device cuda``; here it runs on the CPU.

    python bench/serve_check.py                  # --device cpu
    python bench/serve_check.py --device cuda --precision bf16
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--timeout", type=float, default=300, help="seconds for the server to start")
    args = ap.parse_args(argv)

    import httpx
    from gradio_client import Client, handle_file
    from PIL import Image

    port = free_port()
    cmd = [sys.executable, str(ROOT / "app.py"), "--device", args.device, "--precision", args.precision,
           "--port", str(port)]
    if not (ROOT / "examples" / "default_model.safetensors").exists():
        cmd.append("--random-weights")
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}/"
    steps: list[tuple[str, float]] = []

    def step(name, fn):
        t0 = time.perf_counter()
        out = fn()
        steps.append((name, time.perf_counter() - t0))
        print(f"  {name:<42} {steps[-1][1] * 1e3:8.0f} ms", flush=True)
        return out

    try:
        t0 = time.perf_counter()
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"app.py exited with status {server.returncode} before serving")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.perf_counter() - t0 > args.timeout:
                raise RuntimeError(f"app.py did not serve {url} within {args.timeout:.0f} s")
            time.sleep(0.5)
        print(f"app.py {' '.join(cmd[2:])}: serving after {time.perf_counter() - t0:.1f} s")
        page = httpx.get(url, timeout=30).text
        assert "Deformable DETR Explorer" in page, "the page does not carry the explorer's title"
        c = Client(url, verbose=False)
        examples = sorted((ROOT / "examples" / "synthetic").glob("*.png"))
        name = examples[0].name if examples else None
        if name:
            r = step("example (first run on the device)", lambda: c.predict(name, 0.3, api_name="/detect_example"))
            r = step("example again", lambda: c.predict(examples[1].name if len(examples) > 1 else name, 0.3,
                                                        api_name="/detect_example"))
            assert "detection" in r[3], r[3]
            r = step("change of view (layer 0, two heads)", lambda: c.predict(0, [0, 1], [0, 1, 2, 3], "weight", 0, "merged",
                                                                              0, api_name="/set_view"))
            assert "layer 0" in r[3], r[3]
        img = Path(tempfile.mkdtemp()) / "upload.png"
        Image.new("RGB", (320, 240), (120, 160, 200)).save(img)
        r = step("upload", lambda: c.predict(handle_file(str(img)), 0.3, api_name="/detect"))
        assert "upload.png" in r[3], r[3]
        c.close()
        print(f"ok: app.py --device {args.device} --precision {args.precision} serves the page and runs the model")
        return 0
    except Exception as e:
        log.flush()
        tail = Path(log.name).read_text().splitlines()[-25:]
        print(f"FAILED: {type(e).__name__}: {e}\n--- app.py log (last lines) ---\n" + "\n".join(tail), file=sys.stderr)
        return 1
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    sys.exit(main())
