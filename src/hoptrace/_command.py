"""The ``hoptrace`` command's entry point: one clear line when an extra is missing.

``pip install hoptrace`` installs the command with the core alone. The command itself needs
the ``cli`` extra, and ``hoptrace demo`` needs the ``demo`` extra. Without them, the command
says which extra to install and exits 1, instead of printing a traceback.
"""

from __future__ import annotations

import sys

#: Top-level module -> the extra that installs it.
EXTRA_FOR: dict[str, str] = {
    "click": "cli",
    "rich": "cli",
    "orjson": "cli",
    "opentelemetry.sdk": "demo",
    "opentelemetry.exporter": "demo",
    "starlette": "demo",
    "httpx": "demo",
    "celery": "demo",
    "kombu": "demo",
    "aiokafka": "demo",
    "pika": "demo",
}


def missing_extra(error: ModuleNotFoundError) -> str | None:
    """The extra that provides the module ``error`` names, or None if it is none of ours."""
    name = error.name or ""
    for module, extra in EXTRA_FOR.items():
        if name == module or name.startswith(module + "."):
            return extra
    return None


def main() -> None:
    """Run the ``hoptrace`` command, or say which extra it needs."""
    try:
        from .cli import main as cli_main

        cli_main()
    except ModuleNotFoundError as error:
        extra = missing_extra(error)
        if extra is None:
            raise
        print(
            f"hoptrace: this command needs the '{extra}' extra (no module named "
            f"{error.name!r}): pip install 'hoptrace[{extra}]'",
            file=sys.stderr,
        )
        sys.exit(1)
