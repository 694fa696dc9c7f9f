"""The hoptrace command without its extras: one line naming the extra, exit status 1."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hoptrace._command import missing_extra


def run_without(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    code = (
        f"import sys; sys.modules[{module!r}] = None; sys.argv = ['hoptrace', *{list(args)!r}]; "
        "from hoptrace._command import main; main()"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)


def test_command_without_the_cli_extra_names_it_and_exits_1() -> None:
    out = run_without("click", "--help")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "hoptrace: this command needs the 'cli' extra (no module named 'click'): "
        "pip install 'hoptrace[cli]'"
    ]


def test_command_with_its_extras_runs() -> None:
    ok = run_without("no_such_module_hoptrace_test", "--help")
    assert ok.returncode == 0 and "Usage: hoptrace" in ok.stdout


@pytest.mark.parametrize(
    ("module", "extra"),
    [("click", "cli"), ("rich.console", "cli"), ("starlette.routing", "demo"),
     ("opentelemetry.sdk.trace", "demo"), ("httpx", "demo"), ("numpy", None)],
)
def test_each_missing_module_maps_to_its_extra(module: str, extra: str | None) -> None:
    assert missing_extra(ModuleNotFoundError(f"No module named {module!r}", name=module)) == extra
