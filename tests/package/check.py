#!/usr/bin/env python3
"""The release check behind `make package-test`: build, inspect and install hoptrace as a user.

1. ``python -m build`` makes the sdist, then the wheel FROM that sdist (build's default), with
   HOPTRACE_REQUIRE_SPEEDUPS=1: the C module must compile from the sdist alone.
2. The sdist holds the C source and the build hook and none of the checkout's local state; the
   wheel is tagged for this interpreter and holds py.typed, the compiled hoptrace._speedups,
   the LICENSE (dist-info/licenses), the entry points, and no .c file.
3. ``twine check --strict`` on both.
4. A fresh venv with ``pip install '<wheel>[all]'``: ``hoptrace --help``,
   ``hoptrace demo --brokers memory`` (exit 0, prints a trace), the C module in use, and every
   example in examples/ (the broker ones against ``scripts/brokers up`` or the brokers that
   HOPTRACE_AMQP_URL, HOPTRACE_KAFKA_BOOTSTRAP and HOPTRACE_REDIS_URL name), run from outside
   the checkout so they import the installed wheel; json_logging.py without structlog, then
   with the libraries some examples show hoptrace beside (structlog, Flask, the B3 propagator,
   the Prometheus exporter): json_logging.py, http_wsgi.py, existing_otel_setup.py's B3 part
   and metrics_prometheus.py.
5. A fresh venv with the wheel alone (no extras): the library imports, and ``hoptrace --help``
   prints the one-line missing-extra message on stderr and exits 1.

Every mismatch is reported; the script exits 1 if there was any. Run with the project's venv
Python (the wheel is built for it): ``.venv/bin/python tests/package/check.py``.
"""

from __future__ import annotations

import email.parser
import importlib.machinery
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / "dist"
EXAMPLES = ROOT / "examples"

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

with open(ROOT / "pyproject.toml", "rb") as _file:
    _PROJECT = tomllib.load(_file)["project"]
NAME: str = _PROJECT["name"]
VERSION: str = _PROJECT["version"]

# Parts of the checkout that must never ship in the sdist.
LOCAL_STATE = {
    ".git", ".venv", ".brokers", ".nox", "build", "dist", "__pycache__", ".hypothesis",
    ".pytest_cache", ".mypy_cache", ".ruff_cache",
}
# The entry points pyproject declares, as the wheel's entry_points.txt must carry them.
ENTRY_POINT_GROUPS = ("console_scripts", "opentelemetry_instrumentor", "opentelemetry_propagator")
# The one line `hoptrace` prints without the cli extra (src/hoptrace/_command.py).
MISSING_EXTRA = re.compile(
    r"^hoptrace: this command needs the 'cli' extra \(no module named '[\w.]+'\): "
    r"pip install 'hoptrace\[cli\]'$"
)


class Check:
    """Collects failures; every check prints one line."""

    def __init__(self) -> None:
        self.failures: list[str] = []
        self.started = time.monotonic()

    def ok(self, condition: bool, what: str, detail: str = "") -> bool:
        mark = "ok  " if condition else "FAIL"
        print(f"  [{mark}] {what}" + (f"\n{_indent(detail)}" if detail and not condition else ""))
        if not condition:
            self.failures.append(what)
        return condition

    def step(self, title: str) -> None:
        print(f"\n== {title}  (+{time.monotonic() - self.started:.0f}s)", flush=True)


def _indent(text: str, prefix: str = "         | ") -> str:
    lines = text.rstrip().splitlines() or [""]
    if len(lines) > 60:
        lines = [*lines[:20], f"... ({len(lines) - 40} lines) ...", *lines[-20:]]
    return "\n".join(prefix + line for line in lines)


def run(
    command: Sequence[str | Path],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """Run ``command``, capturing its output (the caller checks the result)."""
    print(f"  $ {' '.join(str(part) for part in command)}", end="", flush=True)
    started = time.monotonic()
    done = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    print(f"  ({time.monotonic() - started:.1f}s)", flush=True)
    return done


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without anything that would change what is built or imported."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "VIRTUAL_ENV", "HOPTRACE_NO_SPEEDUPS", "HOPTRACE_PURE_PYTHON")
        and not key.startswith("OTEL_")
    }
    env.update(extra)
    return env


def output_of(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"


# --- 1. build ---------------------------------------------------------------------------------


def build(check: Check) -> tuple[Path, Path] | None:
    check.step("python -m build: the sdist, then the wheel from the sdist")
    DIST.mkdir(exist_ok=True)
    for old in DIST.glob(f"{NAME}-*"):
        old.unlink()
    # uv (the dev extra) fills build's two isolated environments in a second from its cache;
    # the build itself is the same (hatchling, with hatch_build.py compiling the C module).
    installer = ["--installer", "uv"] if importlib.util.find_spec("uv") else []
    done = run(
        [sys.executable, "-m", "build", *installer, "--outdir", DIST, ROOT],
        env=clean_env(HOPTRACE_REQUIRE_SPEEDUPS="1"),
    )
    if not check.ok(done.returncode == 0, "python -m build succeeds", output_of(done)):
        return None
    # build reports its steps ("* Building sdist...", "* Building wheel from sdist") on stdout
    # or stderr depending on its version and whether it thinks it has a terminal: look at both.
    check.ok("Building wheel from sdist" in done.stdout + done.stderr,
             "the wheel was built from the sdist", output_of(done))
    sdists = sorted(DIST.glob(f"{NAME}-{VERSION}.tar.gz"))
    wheels = sorted(DIST.glob(f"{NAME}-{VERSION}-*.whl"))
    check.ok(len(sdists) == 1, f"one sdist in dist/: {[p.name for p in sdists]}")
    check.ok(len(wheels) == 1, f"one wheel in dist/: {[p.name for p in wheels]}")
    if len(sdists) != 1 or len(wheels) != 1:
        return None
    return sdists[0], wheels[0]


# --- 2. contents ------------------------------------------------------------------------------


def inspect_sdist(check: Check, sdist: Path) -> None:
    check.step(f"sdist contents: {sdist.name}")
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
    top = f"{NAME}-{VERSION}"
    for wanted in (
        "pyproject.toml", "hatch_build.py", "README.md", "LICENSE", "PKG-INFO",
        "src/hoptrace/__init__.py", "src/hoptrace/_speedups.c", "src/hoptrace/py.typed",
    ):
        check.ok(f"{top}/{wanted}" in names, f"sdist has {wanted}")
    stray = [
        name for name in names
        if LOCAL_STATE & set(Path(name).parts) or name.endswith((".so", ".pyd", ".pyc"))
    ]
    check.ok(not stray, "sdist has no local state (venvs, brokers, build output, .so, caches)",
             "\n".join(stray[:40]))
    check.ok(len(names) < 500, f"sdist is small: {len(names)} entries, {sdist.stat().st_size} bytes")


def inspect_wheel(check: Check, wheel: Path) -> None:
    check.step(f"wheel contents: {wheel.name}")
    interpreter = f"cp{sys.version_info.major}{sys.version_info.minor}"
    tags = wheel.name.removesuffix(".whl").split("-")[2:]
    check.ok(
        tags[0] == interpreter and tags[1] == interpreter and tags[2] != "any",
        f"wheel is tagged for this interpreter and platform ({'-'.join(tags)}), not pure Python",
    )
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = f"{NAME}-{VERSION}.dist-info"
        metadata = email.parser.Parser().parsestr(archive.read(f"{info}/METADATA").decode())
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    check.ok("hoptrace/py.typed" in names, "wheel has hoptrace/py.typed")
    check.ok(f"hoptrace/_speedups{suffix}" in names, f"wheel has hoptrace/_speedups{suffix}",
             "\n".join(n for n in names if "speedups" in n))
    check.ok(f"{info}/licenses/LICENSE" in names, f"wheel has {info}/licenses/LICENSE")
    sources = [n for n in names if n.endswith((".c", ".h"))]
    check.ok(not sources, "wheel has no C source", "\n".join(sources))
    junk = [n for n in names if "__pycache__" in n or n.endswith(".pyc") or n.startswith("tests/")]
    check.ok(not junk, "wheel has no bytecode or tests", "\n".join(junk))
    outside = [n for n in names if not n.startswith(("hoptrace/", f"{info}/"))]
    check.ok(not outside, "wheel installs only the hoptrace package", "\n".join(outside))
    check.ok(metadata["Name"] == NAME and metadata["Version"] == VERSION,
             f"METADATA names {NAME} {VERSION}")
    check.ok(metadata["Requires-Python"] == _PROJECT["requires-python"],
             f"METADATA Requires-Python {metadata['Requires-Python']}")
    check.ok(metadata.get("License-Expression") == _PROJECT["license"],
             f"METADATA License-Expression {metadata.get('License-Expression')}")
    check.ok(metadata.get("Description-Content-Type") == "text/markdown",
             "METADATA long description is Markdown (README.md)")
    for group in ENTRY_POINT_GROUPS:
        check.ok(f"[{group}]" in entry_points, f"entry_points.txt has [{group}]", entry_points)
    declared = {
        **_PROJECT["scripts"],
        **_PROJECT["entry-points"]["opentelemetry_instrumentor"],
        **_PROJECT["entry-points"]["opentelemetry_propagator"],
    }
    missing = [f"{k} = {v}" for k, v in declared.items() if f"{k} = {v}" not in entry_points]
    check.ok(not missing, f"entry_points.txt carries all {len(declared)} declared entry points",
             "\n".join(missing))


def twine_check(check: Check, sdist: Path, wheel: Path) -> None:
    check.step("twine check --strict")
    done = run([sys.executable, "-m", "twine", "check", "--strict", sdist, wheel])
    check.ok(done.returncode == 0 and done.stdout.count("PASSED") == 2,
             "twine check --strict passes for the sdist and the wheel", output_of(done))


# --- 3. installs ------------------------------------------------------------------------------


def new_venv(check: Check, where: Path, requirement: str) -> Path | None:
    done = run([sys.executable, "-m", "venv", where])
    if not check.ok(done.returncode == 0, f"venv {where.name} created", output_of(done)):
        return None
    python = where / "bin" / "python"
    done = run([python, "-m", "pip", "install", "-q", requirement], env=clean_env())
    if not check.ok(done.returncode == 0, f"pip install '{requirement}'", output_of(done)):
        return None
    done = run([python, "-m", "pip", "check"], env=clean_env())
    check.ok(done.returncode == 0, "pip check: the installed set is consistent", output_of(done))
    return python


def check_accelerated(check: Check, python: Path, venv: Path, work: Path) -> None:
    done = run(
        [python, "-c",
         "import hoptrace, hoptrace.core.propagation as p; print(hoptrace.__file__, p.ACCELERATED)"],
        cwd=work, env=clean_env(),
    )
    location, _, accelerated = done.stdout.strip().rpartition(" ")
    check.ok(done.returncode == 0 and accelerated == "True",
             "hoptrace.core.propagation.ACCELERATED is True (the C module loads)", output_of(done))
    check.ok(Path(location).resolve().is_relative_to(venv.resolve()),
             f"hoptrace is imported from the venv ({location})")


def install_all(check: Check, wheel: Path, work: Path) -> None:
    check.step(f"fresh venv: pip install '{wheel.name}[all]'")
    venv = work / "venv-all"
    python = new_venv(check, venv, f"{wheel}[all]")
    if python is None:
        return
    command = venv / "bin" / "hoptrace"
    check_accelerated(check, python, venv, work)

    done = run([command, "--help"], cwd=work, env=clean_env())
    check.ok(done.returncode == 0 and "Usage:" in done.stdout and "demo" in done.stdout,
             "hoptrace --help exits 0 and lists the commands", output_of(done))

    out = work / "demo-out"
    done = run([command, "demo", "--brokers", "memory", "--out", out], cwd=work, env=clean_env(),
               timeout=180)
    check.ok(done.returncode == 0 and "trace" in done.stdout,
             "hoptrace demo --brokers memory exits 0 and prints the trace", output_of(done))
    check.ok((out / "spans.jsonl").is_file() and (out / "report.html").is_file(),
             "the demo writes spans.jsonl and report.html")

    # Run from outside the checkout: the examples must import the installed wheel.
    for example, args, wanted in EXAMPLE_RUNS:
        run_example(check, python, work, example, args, wanted)

    # json_logging.py without structlog (hoptrace does not depend on it): the two stdlib lines
    # and a note on stderr; with it (below), the third line from structlog's processor.
    done = run([python, EXAMPLES / "json_logging.py"], cwd=work, env=clean_env(), timeout=120)
    check.ok(
        done.returncode == 0 and _json_lines_with_tx(done.stdout) == 2
        and "structlog is not installed" in done.stderr,
        "examples/json_logging.py without structlog: two JSON lines with the transaction ID",
        output_of(done),
    )
    # The libraries some examples show hoptrace beside, which a user brings: hoptrace supports
    # them without depending on them (no extra installs them).
    done = run([python, "-m", "pip", "install", "-q", *USER_LIBRARIES], env=clean_env())
    if not check.ok(done.returncode == 0, f"pip install {' '.join(USER_LIBRARIES)}",
                    output_of(done)):
        return
    done = run([python, EXAMPLES / "json_logging.py"], cwd=work, env=clean_env(), timeout=120)
    check.ok(done.returncode == 0 and _json_lines_with_tx(done.stdout) == 3,
             "examples/json_logging.py with structlog: three JSON lines with the transaction ID",
             output_of(done))
    for example, args, wanted in USER_LIBRARY_RUNS:
        run_example(check, python, work, example, args, wanted)
    ran = {name for name, _, _ in EXAMPLE_RUNS + USER_LIBRARY_RUNS} | {"json_logging.py"}
    every = {path.name for path in EXAMPLES.glob("*.py")} - {"broker_urls.py"}
    check.ok(ran == every, "every example in examples/ was run", f"not run: {sorted(every - ran)}")


# (example, arguments, a line its stdout must have) for every example that runs from [all]
# alone; the broker examples use the local brokers (`scripts/brokers up`) or HOPTRACE_AMQP_URL,
# HOPTRACE_KAFKA_BOOTSTRAP and HOPTRACE_REDIS_URL.
EXAMPLE_RUNS: list[tuple[str, tuple[str, ...], str]] = [
    ("quickstart.py", (), r"^one transaction ID across the hop: [0-9a-f]{32} \(ok\)$"),
    # Its B3 part needs opentelemetry-propagator-b3 (run below, once the user adds it).
    ("existing_otel_setup.py", (), r"the handler's transaction ID: [0-9a-f]{32} \(ok\)\n(.*\n)*"
     r"   x-transaction-id: True$"),
    ("http_asgi.py", (), r"^spans written to "),
    ("rabbitmq_pika.py", (), r"^one transaction ID across the hop: \S+ \(ok\)$"),
    ("rabbitmq_kombu.py", (), r"^one transaction ID across the hop: \S+ \(ok\)$"),
    ("rabbitmq_aio_pika.py", (), r"^one transaction ID across the hop: \S+ \(ok\)$"),
    ("kafka_aiokafka.py", (), r"^each record handled in its producer's trace: ok$"),
    ("kafka_confluent.py", (), r"^each record handled in its producer's trace: ok$"),
    ("kafka_python.py", (), r"^each record handled in its producer's trace: ok$"),
    ("celery_app.py", (), r"^retry: 3 task runs, trace [0-9a-f]{32}, one transaction: OK$"),
    ("faststream_app.py", ("--broker", "kafka"), r"spans; every handler in its"),
    ("faststream_app.py", ("--broker", "rabbit"), r"spans; every handler in its"),
    ("faststream_app.py", ("--broker", "redis"), r"spans; every handler in its"),
]
# What a user adds for the examples that show hoptrace beside their own choice of logging
# library, web framework, propagator or metrics exporter; hoptrace depends on none of them.
USER_LIBRARIES = (
    "structlog", "flask", "opentelemetry-propagator-b3", "opentelemetry-exporter-prometheus",
)
USER_LIBRARY_RUNS: list[tuple[str, tuple[str, ...], str]] = [
    ("http_wsgi.py", (), r"^response 200, X-Transaction-ID: \S+"),
    ("existing_otel_setup.py", (), r"^   the consumer's trace and transaction: ok$"),
    ("metrics_prometheus.py", (), r"^handled (\d+) of \1 messages"),
]


def run_example(
    check: Check, python: Path, work: Path, example: str, args: Sequence[str], wanted: str
) -> None:
    done = run([python, EXAMPLES / example, *args], cwd=work, env=clean_env(), timeout=180)
    check.ok(
        done.returncode == 0 and re.search(wanted, done.stdout, re.M) is not None
        and "MISMATCH" not in done.stdout and "LOST" not in done.stdout,
        f"examples/{' '.join([example, *args])} runs and reports success",
        output_of(done),
    )


def _json_lines_with_tx(stdout: str) -> int:
    try:
        records = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    except ValueError:
        return -1
    return sum(1 for record in records if record.get("transaction_id"))


def install_core(check: Check, wheel: Path, work: Path) -> None:
    check.step(f"fresh venv: pip install {wheel.name} (no extras)")
    venv = work / "venv-core"
    python = new_venv(check, venv, str(wheel))
    if python is None:
        return
    check_accelerated(check, python, venv, work)
    done = run(
        [python, "-c", "import hoptrace\n"
         "with hoptrace.transaction('t') as tx: headers = hoptrace.inject({})\n"
         "assert headers and tx.transaction_id, headers"],
        cwd=work, env=clean_env(),
    )
    check.ok(done.returncode == 0, "the core API works with opentelemetry-api alone",
             output_of(done))
    done = run([venv / "bin" / "hoptrace", "--help"], cwd=work, env=clean_env())
    lines = done.stderr.splitlines()
    check.ok(
        done.returncode == 1 and done.stdout == "" and len(lines) == 1
        and bool(MISSING_EXTRA.match(lines[0])),
        "hoptrace --help without extras: exit 1, one line naming the 'cli' extra",
        output_of(done),
    )


def main() -> int:
    check = Check()
    print(f"hoptrace package check with {sys.executable} ({sys.version.split()[0]})")
    built = build(check)
    if built is not None:
        sdist, wheel = built
        inspect_sdist(check, sdist)
        inspect_wheel(check, wheel)
        twine_check(check, sdist, wheel)
        work = Path(tempfile.mkdtemp(prefix="hoptrace-package-"))
        try:
            install_all(check, wheel, work)
            install_core(check, wheel, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - check.started
    if check.failures:
        print(f"\npackage check FAILED ({len(check.failures)} of the checks, {elapsed:.0f}s):")
        for failure in check.failures:
            print(f"  - {failure}")
        return 1
    print(f"\npackage check passed ({elapsed:.0f}s): {', '.join(p.name for p in built or ())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
