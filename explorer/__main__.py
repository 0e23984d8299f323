"""``python -m explorer`` and the ``ddetr-explorer`` command: the same as ``python app.py``.

A console script imports its target before calling it, so this launcher imports nothing heavy:
it sets what must be set before Gradio and torch load (no analytics; sleeping OpenMP threads,
``ddetr/openmp.py``) and only then imports the command line.
"""
from __future__ import annotations

import os


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from ddetr.openmp import sleep_when_idle

    sleep_when_idle()
    from explorer.cli import main as cli_main

    cli_main(argv)


if __name__ == "__main__":
    main()
