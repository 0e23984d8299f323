"""Test helper: one page (one gradio_client Client, one session) flooding a server with uploads.

    python tests/flood_client.py URL IMAGE THREADS [USER:PASSWORD]

Each thread uploads IMAGE to ``/detect`` back to back until the process is killed; a refused
upload is sent again a second later (a script that keeps retrying; a browser page sends
each upload once, and spinning on refusals would measure this process's CPU, not the server). It prints "flooding" when the threads have started, and a line
"ok=N refused=M" on SIGTERM. Run as its own process so that its Python work does not share the
server's interpreter lock (a real flood comes from another machine).
"""
import os
import signal
import sys
import threading
import time


def main(url: str, image: str, threads: int, auth: tuple[str, str] | None = None) -> None:
    from gradio_client import Client, handle_file

    client = Client(url, auth=auth, verbose=False)
    counts = {"ok": 0, "refused": 0}

    def flood():
        while True:
            try:
                client.predict(handle_file(image), 0.3, api_name="/detect")
                counts["ok"] += 1
            except Exception:  # refused at the queue's door (HTTP 400), or the server went away
                counts["refused"] += 1
                time.sleep(1.0)

    def report(*_):
        print(f"ok={counts['ok']} refused={counts['refused']}", flush=True)
        os._exit(0)  # not SystemExit: the client's executor threads would be joined, mid-request

    signal.signal(signal.SIGTERM, report)
    for _ in range(threads):
        threading.Thread(target=flood, daemon=True).start()
    print("flooding", flush=True)
    while True:  # not Event().wait(): a SIGTERM caught by another thread would never wake it
        time.sleep(0.2)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), tuple(sys.argv[4].split(":", 1)) if len(sys.argv) > 4 else None)
