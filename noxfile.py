"""The version matrix: hoptrace on every supported Python, at the oldest and the newest clients.

    make matrix        every session below (venvs reused between runs: nox -r)
    make matrix-ci     the cells `make test` does not cover: tests-3.10, tests-3.12, tests-3.13,
                       oldest and newest-core (tag "ci"), in two shards side by side
                       (CI_CELLS below);
                       `make test` is Python 3.11 with the newest clients
    nox -l             list the sessions;  nox -s oldest -- -x   pass pytest arguments

Sessions:
    tests-3.10 … tests-3.13   that Python, `.[all,dev]` as uv (else pip) resolves it (a fresh
                              venv gets the newest release of every client for that Python)
    oldest                    Python 3.10, every runtime dependency pinned to the lower bound in
                              pyproject.toml (read from it, so the cell follows the bounds), and
                              the OTel contrib packages at the release matching that SDK
    newest                    Python 3.13, `uv pip install --upgrade` (pip: with
                              --upgrade-strategy eager): the newest release of everything, even
                              in a reused venv
    newest-core               Python 3.13, the newest OTel API and SDK without the contrib
                              packages (which pin the SDK they were released with): the tests of
                              the paths that read the SDK's internals (NEWEST_CORE_TESTS)

Each session installs hoptrace from this checkout as a wheel (not editable), with
HOPTRACE_REQUIRE_SPEEDUPS=1 so the C module must compile, checks that
``hoptrace.core.propagation.ACCELERATED is True``, then runs the unit suite (less the two
``long`` fuzz runs, which `make test` runs) and FAST_INTEGRATION against the local brokers
(`scripts/brokers up`). Any skipped test fails the session: a test that cannot run on a cell is
deselected below, by name, with the reason.

The venvs are made and filled by uv (the dev extra installs it; nox's "uv" backend), from its
cache (~/.cache/uv) after the first run; without uv, by virtualenv and pip.

Interpreters come from pyenv's tree (~/.pyenv/versions/X.Y.*/bin/pythonX.Y, or $PYENV_ROOT),
then from PATH; the pyenv shims are not needed. A missing interpreter fails the run under
CI=true and skips its session with a message elsewhere.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import nox
from packaging.requirements import Requirement

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 running nox
    import tomli as tomllib  # type: ignore[no-redef]

nox.needs_version = ">=2025.10.14"

ROOT = Path(__file__).resolve().parent
PYTHONS = ("3.10", "3.11", "3.12", "3.13")
CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")

# Venvs live under build/ (git-ignored, so also kept out of the sdist); `make clean` drops them.
nox.options.envdir = str(ROOT / "build" / "nox")
# uv (from the dev extra) creates the venvs and installs into them, from its cache after the
# first run: a cell's install takes seconds instead of pip's minute. Without uv, virtualenv+pip.
nox.options.default_venv_backend = "uv|virtualenv"
# Never fetch a Python from the network: the matrix tests the interpreters on this machine.
nox.options.download_python = "never"
nox.options.error_on_missing_interpreters = CI

# The integration subset every cell runs (about 50 s here): each client against its real
# broker (RabbitMQ: pika, aio-pika, kombu; Kafka: aiokafka, confluent-kafka, kafka-python;
# Redis: Celery's broker and FastStream's), Celery with a real prefork worker, the contrib
# instrumentations beside ours (always-on and sampled), and `opentelemetry-instrument` loading our entry points.
# The rest of tests/integration (fault injection, pools, concurrency, the demo across brokers,
# the HTML report in Chromium) runs in `make test` on Python 3.11.
FAST_INTEGRATION = [
    "tests/integration/test_core_smoke.py",
    "tests/integration/test_pika.py",
    "tests/integration/test_aio_pika.py",
    "tests/integration/test_kombu.py",
    "tests/integration/test_aiokafka.py",
    "tests/integration/test_confluent_kafka.py",
    "tests/integration/test_kafka_python.py",
    "tests/integration/test_celery_redis_broker.py",
    "tests/integration/test_celery_worker.py",
    "tests/integration/test_faststream.py",
    "tests/integration/test_contrib_coexistence.py",
    "tests/integration/test_sampled_contrib.py",
    "tests/integration/test_opentelemetry_instrument.py",
]
UNIT = ["tests/unit"]
# The 10,000-example Hypothesis run and the atheris harness take ~50 s together; `make test`
# runs them (and CI with it). Every cell still runs the rest of tests/unit/test_fuzz_extract.py.
UNIT_MARKERS = "not long"

# Tests that cannot run on one cell: session -> [(node-id pattern, reason)]; `*` is the only
# wildcard. The session collects its tests, passes every match to pytest as --deselect and logs
# it with the reason, so it shows in the run's "deselected" count, never as a silent skip. A
# pattern that matches nothing fails the session (the list stays true).
_NO_CONTRIB_AIOKAFKA = (
    "opentelemetry-instrumentation-aiokafka has no release for OTel SDK 1.20 (its first, "
    "0.49b0, needs API/SDK 1.28)"
)
_NO_CONTRIB_CONFLUENT = (
    "opentelemetry-instrumentation-confluent-kafka 0.41b0 (the release for SDK 1.20) refuses "
    "confluent-kafka > 2.2.0, below hoptrace's floor of 2.5"
)
_SDK_IDS_NOT_INLINE = (
    "SDK 1.20's RandomIdGenerator draws once, with no new draw on a 0 ID: the C entries call "
    "its methods instead of running its body"
)
_READERS_FIXED = (
    "SDK 1.20 fixes a meter provider's readers when it is made (add_metric_reader came in "
    "1.43): no reader can be added later"
)
DESELECT: dict[str, list[tuple[str, str]]] = {
    "oldest": [
        ("tests/unit/test_metrics_readerless.py::test_a_reader_added_later_counts_the_next_"
         "message", _READERS_FIXED),
        ("tests/unit/test_metrics_readerless.py::test_watching_the_readers_leaves_the_sdk_alone",
         _READERS_FIXED),
        ("tests/integration/test_contrib_coexistence.py::test_aiokafka[*", _NO_CONTRIB_AIOKAFKA),
        ("tests/integration/test_sampled_contrib.py::test_aiokafka[*", _NO_CONTRIB_AIOKAFKA),
        ("tests/integration/test_sampled_contrib.py::test_confluent_kafka[*",
         _NO_CONTRIB_CONFLUENT),
        # The benchmark's peer cases run contrib's confluent-kafka instrumentation, and its
        # metrics floor makes the exemplar reservoir's steps (exemplars came in SDK 1.22).
        (
            "tests/unit/test_bench_peers.py::test_contrib_confluent_makes_recv_and_a_linked_"
            "process_span",
            _NO_CONTRIB_CONFLUENT,
        ),
        (
            "tests/unit/test_bench_peers.py::test_every_confluent_case_sends_the_trace_and_a_"
            "business_id[otel_confluent]",
            _NO_CONTRIB_CONFLUENT,
        ),
        (
            "tests/unit/test_bench_peers.py::test_contrib_continues_each_send_s_trace["
            "otel_aiokafka]",
            _NO_CONTRIB_AIOKAFKA,
        ),
        (
            "tests/unit/test_bench_peers.py::test_contrib_continues_each_send_s_trace["
            "otel_celery]",
            "opentelemetry-instrumentation-celery 0.41b0 runs the task in its span but not in "
            "the extracted context, so the business ID's baggage entry never reaches it",
        ),
        # The 1% peer cases compare with the contrib release that pairs with the newest SDK;
        # 0.41b0's consumers do not continue the send's trace there.
        (
            "tests/unit/test_bench_peers.py::test_contrib_1pct_records_the_same_messages["
            "confluent]",
            _NO_CONTRIB_CONFLUENT,
        ),
        (
            "tests/unit/test_bench_peers.py::test_contrib_1pct_records_the_same_messages["
            "aiokafka]",
            _NO_CONTRIB_AIOKAFKA,
        ),
        (
            "tests/unit/test_bench_peers.py::test_contrib_1pct_records_the_same_messages[pika]",
            "opentelemetry-instrumentation-pika 0.41b0 makes consumer spans that are not "
            "children of the sends (more of them than sampled sends), so the case cannot show "
            "contrib's consumers in the send's trace",
        ),
        (
            "tests/unit/test_bench_peers.py::test_contrib_1pct_records_the_same_messages["
            "aiopika]",
            "opentelemetry-instrumentation-aio-pika 0.41b0 makes consumer spans with no "
            "parent: they do not continue the send's trace",
        ),
        (
            "tests/unit/test_bench_peers.py::test_contrib_1pct_records_the_same_messages["
            "celery]",
            "opentelemetry-instrumentation-celery 0.41b0 runs the task in its span but not in "
            "the extracted context, so the business ID's baggage entry never reaches it",
        ),
        (
            "tests/unit/test_metrics_bench.py::test_the_floors_export_what_hoptrace_exports",
            "the metrics floor makes the exemplar reservoir's steps: SDK 1.20 has no exemplars",
        ),
        (
            "tests/unit/test_metrics_bench.py::test_a_floor_feeding_a_wrong_aggregation_is_"
            "caught",
            "the metrics floor makes the exemplar reservoir's steps: SDK 1.20 has no exemplars",
        ),
        (
            "tests/integration/test_contrib_coexistence.py::test_confluent_kafka[*",
            _NO_CONTRIB_CONFLUENT,
        ),
        (
            "tests/integration/test_opentelemetry_instrument.py::"
            "test_opentelemetry_instrument_with_contrib_loaded",
            "loads all six contrib instrumentations; aiokafka's and confluent-kafka's have no "
            "release that works with SDK 1.20 and confluent-kafka 2.3",
        ),
        # FastStream's own OpenTelemetry middleware, which the tests run beside hoptrace's:
        # a FastStream feature (faststream[otel]) with its own, higher SDK floor.
        (
            "tests/integration/test_faststream.py::*telemetry*",
            "FastStream's TelemetryMiddleware needs faststream[otel], i.e. opentelemetry-sdk "
            ">= 1.24 (it calls get_meter(schema_url=...), which API 1.20 lacks)",
        ),
        # rich < 14.3 writes a newline to a non-terminal console when a disabled Progress
        # stops, so `hoptrace view/stats` print one blank line on stderr there; the test
        # asserts none (it runs on every other cell).
        (
            "tests/unit/test_cli.py::test_long_read_shows_a_progress_bar_on_a_terminal",
            "rich < 14.3 prints a blank line for a disabled progress bar",
        ),
        (
            "tests/unit/test_examples.py::test_metrics_prometheus_example_exports_one_queue_wait"
            "_series_per_edge",
            "opentelemetry-exporter-prometheus 0.41b0 names series without the unit suffixes "
            "the example's output filter looks for",
        ),
        # OTel API 1.20 keeps the current Context where hoptrace cannot reach its ContextVar
        # (otel_shims._CONTEXT_VAR is None), so the C consume open stands down there and the
        # tests that compare it with the Python steps have nothing to compare.
        (
            "tests/unit/test_consume_open_c.py::*",
            "OTel API 1.20: no reachable ContextVar, the C consume open is not used",
        ),
        (
            "tests/unit/test_consume_dropped_fast_path.py::test_the_c_open_*",
            "OTel API 1.20: no reachable ContextVar, the C consume open is not used",
        ),
        (
            "tests/unit/test_sampled_scope_end.py::test_a_spec_that_fails_falls_back_to_read_"
            "as_the_general_path_does",
            "OTel API 1.20: no reachable ContextVar, the C consume open is not used",
        ),
        (
            "tests/unit/test_speedups_random_ids.py::test_a_first_delivery_opens_in_one_c_call",
            "OTel API 1.20: no reachable ContextVar, the C consume open is not used",
        ),
        (
            "tests/unit/test_speedups_dropped_send.py::*",
            "OTel API 1.20: no reachable ContextVar, the C dropped send is not used",
        ),
        *(
            (f"tests/unit/test_speedups_module_reads.py::{name}",
             "OTel API 1.20: no reachable ContextVar, the C dropped send is not used")
            for name in (
                "test_the_primed_send_takes_the_c_way",
                "test_a_propagator_set_after_a_send_writes_the_next",
                "test_settings_configured_after_a_send_rule_the_next",
                "test_metrics_on_after_a_send_take_the_next_the_steps_way",
                "test_a_tracer_provider_set_after_a_send_is_asked_for_the_next",
            )
        ),
        # SDK 1.20's RandomIdGenerator draws once, with no new draw on an invalid 0 ID: not the
        # body the C entries run themselves, so they call its methods (the tests that compare
        # the inline draws with the SDK's have nothing inline to compare).
        (
            "tests/unit/test_speedups_random_ids.py::test_a_*_draws_what_the_sdk_draws[class "
            "methods-*",
            _SDK_IDS_NOT_INLINE,
        ),
        (
            "tests/unit/test_speedups_random_ids.py::test_the_sdk_generator_is_inline_and_draws_"
            "the_sdk_s_ids",
            _SDK_IDS_NOT_INLINE,
        ),
        (
            "tests/unit/test_speedups_random_ids.py::test_inline_ids_refuse_other_code",
            _SDK_IDS_NOT_INLINE,
        ),
        (
            "tests/unit/test_speedups_random_ids.py::test_a_subclass_runs_inline_what_it_"
            "inherits[*",
            _SDK_IDS_NOT_INLINE,
        ),
        (
            "tests/unit/test_metrics_edges.py::test_shortcut_exports_what_the_general_path_"
            "exports[*-trace_based]",
            "SDK 1.20 has no exemplars (they came in 1.22): the comparison needs some",
        ),
        (
            "tests/unit/test_metrics_edges.py::test_shortcut_exports_what_the_general_path_"
            "exports[*-always_on]",
            "SDK 1.20 has no exemplars (they came in 1.22): the comparison needs some",
        ),
        (
            "tests/unit/test_metrics_edges.py::test_a_reader_added_or_the_meter_switched_off[*",
            "SDK 1.20 can neither add a reader to a provider nor switch a meter off",
        ),
        (
            "tests/unit/test_bench_peers.py::test_ddtrace_handles_each_message_in_a_child_of_"
            "its_send[ddtrace_confluent]",
            "with the oldest confluent-kafka pin the bench's stand-in cannot instantiate the "
            "Kafka class ddtrace's integration patches (a bench harness, not a hoptrace path)",
        ),
        # Features of newer SDKs that hoptrace's shortcuts match where they exist.
        (
            "tests/unit/test_metrics_lean.py::test_a_meter_switched_off_and_on_again",
            "SDK 1.20 cannot switch a meter off",
        ),
        (
            "tests/unit/test_sdk_spans_root.py::test_the_sdk_s_own_span_counts_are_the_same",
            "SDK 1.20 counts no spans of its own",
        ),
        (
            "tests/unit/test_sdk_spans_root.py::test_a_disabled_tracer_gives_what_the_sdk_gives",
            "SDK 1.20 cannot disable a tracer",
        ),
    ],
}

# The OTel contrib packages are released in lockstep with the SDK: SDK 1.N ↔ contrib 0.(N+21)b0
# (1.20 ↔ 0.41b0, 1.27 ↔ 0.48b0). The oldest cell needs the ones matching its SDK.
# The Prometheus exporter is versioned the same way (0.41b0 with SDK 1.20), though released
# with the SDK.
CONTRIB_PREFIXES = (
    "opentelemetry-instrumentation", "opentelemetry-distro", "opentelemetry-exporter-prometheus",
)
# dev requirements the oldest cell cannot install, with the reason (their tests: DESELECT).
OLDEST_LEAVE_OUT = {
    "opentelemetry-instrumentation-aiokafka": _NO_CONTRIB_AIOKAFKA,
    "opentelemetry-instrumentation-confluent-kafka": _NO_CONTRIB_CONFLUENT,
}


# The cells CI runs (`make matrix-ci`: all but tests-3.11, which `make test` covers in full),
# slowest first. HOPTRACE_MATRIX_SHARD=i/n tags only every n-th of them, from the i-th (0-based),
# "ci": `make matrix-ci` runs two shards side by side, one per core.
CI_CELLS = ("oldest", "tests-3.12", "tests-3.13", "tests-3.10", "newest-core")


def _ci_tags(name: str) -> list[str]:
    shard = os.environ.get("HOPTRACE_MATRIX_SHARD", "").strip()
    cells = CI_CELLS
    if shard:
        index, _, count = shard.partition("/")
        cells = CI_CELLS[int(index) :: int(count)]
    return ["ci"] if name in cells else []


PYENV_VERSIONS = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"


def _interpreter(version: str) -> str | None:
    """The newest pyenv build of Python ``version`` on this machine, else one on PATH."""
    found: list[tuple[int, Path]] = []
    for candidate in PYENV_VERSIONS.glob(f"{version}.*/bin/python{version}"):
        patch = candidate.parent.parent.name.removeprefix(f"{version}.")
        if patch.isdigit() and os.access(candidate, os.X_OK):
            found.append((int(patch), candidate))
    if found:
        return str(max(found)[1])
    on_path = shutil.which(f"python{version}")
    # pyenv's shim answers for every version it knows, installed or not: not a real interpreter.
    if on_path and "shims" not in Path(on_path).parts:
        return on_path
    return None


INTERPRETERS = {version: _interpreter(version) for version in PYTHONS}


def _missing(session: nox.Session, version: str) -> None:
    message = (
        f"Python {version} not found (looked in {PYENV_VERSIONS}/{version}.*/bin/ and on PATH); "
        f"install it (e.g. `pyenv install {version}`) to run this cell"
    )
    if CI:
        session.error(message + " -- CI=true: a missing interpreter fails the run")
    session.skip(message)


# --- pyproject.toml ---------------------------------------------------------------------------


def _project() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as file:
        return tomllib.load(file)["project"]


def _runtime_requirements() -> list[Requirement]:
    """Every requirement `pip install hoptrace[all]` brings in directly."""
    project = _project()
    extras: dict[str, list[str]] = project["optional-dependencies"]
    name = project["name"]
    seen: set[str] = set()
    out: list[Requirement] = [Requirement(r) for r in project["dependencies"]]

    def walk(extra: str) -> None:
        if extra in seen:
            return
        seen.add(extra)
        for text in extras[extra]:
            requirement = Requirement(text)
            if requirement.name == name:
                for inner in sorted(requirement.extras):
                    walk(inner)
            else:
                out.append(requirement)

    walk("all")
    return out


def _lower_bound(requirement: Requirement) -> str:
    bounds = [s.version for s in requirement.specifier if s.operator in (">=", "==", "~=")]
    if len(bounds) != 1:
        raise SystemExit(f"noxfile: no single lower bound in {requirement} (pyproject.toml)")
    return bounds[0]


def _contrib_version(sdk_version: str) -> str:
    major, minor = (int(part) for part in sdk_version.split(".")[:2])
    if major != 1:
        raise SystemExit(f"noxfile: cannot map OTel SDK {sdk_version} to a contrib release")
    return f"0.{minor + 21}b0"


def _oldest_pins() -> tuple[list[str], list[str]]:
    """(constraints pinning every runtime requirement to its lower bound, the dev requirements
    with OTel's contrib packages and propagators moved to the releases matching that SDK)."""
    pins: dict[str, str] = {}
    for requirement in _runtime_requirements():
        if requirement.marker is not None and not requirement.marker.evaluate(
            {"python_version": "3.10"}
        ):
            continue
        version = _lower_bound(requirement)
        previous = pins.setdefault(requirement.name, version)
        if previous != version:
            raise SystemExit(
                f"noxfile: {requirement.name} has two lower bounds ({previous}, {version})"
            )
    sdk = pins["opentelemetry-sdk"]
    contrib = _contrib_version(sdk)
    dev: list[str] = []
    for text in _project()["optional-dependencies"]["dev"]:
        requirement = Requirement(text)
        if requirement.name in OLDEST_LEAVE_OUT:
            continue
        marker = f"; {requirement.marker}" if requirement.marker else ""
        extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
        if requirement.name.startswith(CONTRIB_PREFIXES):
            dev.append(f"{requirement.name}{extras}=={contrib}{marker}")
        elif requirement.name.startswith("opentelemetry-"):
            # The SDK itself, the B3 and Jaeger propagators: released with the API.
            dev.append(f"{requirement.name}{extras}=={sdk}{marker}")
        else:
            dev.append(text)
    constraints = [f"{name}=={version}" for name, version in sorted(pins.items())]
    return constraints + OLDEST_TRANSITIVE, dev


# Pins below the direct requirements that the oldest cell needs to install at all; each one
# says why.
OLDEST_TRANSITIVE: list[str] = [
    # opentelemetry-instrumentation 0.41b0 (`opentelemetry-instrument`) imports pkg_resources,
    # which setuptools removed in 82.0.0; its metadata asks only for setuptools>=16.
    "setuptools<82",
]

# --- sessions ---------------------------------------------------------------------------------


def _build_env() -> dict[str, str | None]:
    # The C module must compile; HOPTRACE_NO_SPEEDUPS / HOPTRACE_PURE_PYTHON from the caller's
    # shell would hide a broken build or test the wrong path.
    return {
        "HOPTRACE_REQUIRE_SPEEDUPS": "1",
        "HOPTRACE_NO_SPEEDUPS": None,
        "HOPTRACE_PURE_PYTHON": None,
    }


def _uses_uv(session: nox.Session) -> bool:
    return session.venv_backend == "uv"


def _uv() -> str:
    found = shutil.which("uv")
    if found:
        return found
    from uv import find_uv_bin  # the uv package nox found it through

    return str(find_uv_bin())


def _pip(session: nox.Session, *args: str) -> None:
    """``pip ARGS`` in the session's venv: ``uv pip`` in a uv venv (which has no pip)."""
    if _uses_uv(session):
        session.run(_uv(), "pip", *args, external=True, silent=True)
    else:
        session.run("python", "-m", "pip", *args, silent=True)


def _install(session: nox.Session, *args: str, upgrade: bool = False) -> None:
    if _uses_uv(session):
        # uv caches the wheel it builds from a local path and would reinstall it unchanged:
        # --reinstall-package rebuilds hoptrace from this checkout (and its C module) each run.
        # --upgrade: every package to its newest release (uv's upgrades are always eager).
        extra = ["--upgrade"] if upgrade else []
        session.install(*extra, "--reinstall-package", "hoptrace", *args, env=_build_env())
        return
    session.install("--upgrade", "pip", silent=True)
    # pip always rebuilds and reinstalls a project given as a local path, so a reused venv
    # gets this checkout's code (and a freshly compiled C module) too.
    extra = ["--upgrade", "--upgrade-strategy", "eager"] if upgrade else []
    session.install(*extra, *args, env=_build_env())


def _check_accelerated(session: nox.Session) -> None:
    session.run(
        "python",
        "-c",
        "import sys, hoptrace, hoptrace.core.propagation as p\n"
        "print('hoptrace', hoptrace.__file__, 'ACCELERATED =', p.ACCELERATED)\n"
        "sys.exit(0 if p.ACCELERATED is True else 'hoptrace._speedups did not load')",
        env=_build_env(),
    )
    # Installed from the wheel, not imported from this checkout's src/.
    session.run(
        "python",
        "-c",
        "import hoptrace, pathlib, sys; p = pathlib.Path(hoptrace.__file__).resolve()\n"
        "if 'site-packages' not in p.parts: sys.exit(f'hoptrace imported from {p}, not a wheel')",
    )


def _pytest(session: nox.Session, label: str, paths: list[str], *args: str) -> None:
    report = Path(session.create_tmp()) / f"junit-{label}.xml"
    command = ["python", "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    deselect = _deselected(session, [*command, *args, *paths])
    for test_id in deselect:
        command += ["--deselect", test_id]
    session.run(*command, f"--junitxml={report}", *args, *paths, *session.posargs,
                env=_build_env())
    _fail_on_skips(session, report)


def _deselected(session: nox.Session, collect: list[str]) -> list[str]:
    """The node IDs DESELECT names for this session among the tests ``collect`` finds."""
    wanted = [
        (pattern, why)
        for pattern, why in DESELECT.get(session.name, [])
        if any(pattern.startswith(path) for path in collect if path.startswith("tests/"))
    ]
    if not wanted:
        return []
    output = session.run(*collect, "--collect-only", silent=True, env=_build_env())
    ids = [line.strip() for line in str(output).splitlines() if "::" in line]
    chosen: dict[str, list[str]] = {}
    for pattern, why in wanted:
        regex = re.compile(".*".join(re.escape(part) for part in pattern.split("*")) + r"\Z")
        matched = [test_id for test_id in ids if regex.match(test_id)]
        if not matched:
            session.error(f"noxfile DESELECT pattern {pattern!r} matches no test: update it")
        for test_id in matched:
            chosen.setdefault(test_id, []).append(why)
    for test_id, reasons in chosen.items():
        session.log(f"deselected {test_id}: {'; '.join(reasons)}")
    return list(chosen)


def _fail_on_skips(session: nox.Session, report: Path) -> None:
    """Every test must run: a skip here means a cell is not testing what it claims to."""
    skipped = []
    for case in ET.parse(report).getroot().iter("testcase"):
        for node in case.findall("skipped"):
            if node.get("type") == "pytest.xfail":
                continue
            skipped.append(
                f"  {case.get('classname')}::{case.get('name')}: {node.get('message', '')}"
            )
    if skipped:
        session.error(
            f"{len(skipped)} test(s) skipped in {session.name}; deselect them in noxfile.py "
            "(DESELECT, with the reason) or fix the install:\n" + "\n".join(skipped)
        )


def _run_suite(session: nox.Session) -> None:
    _check_accelerated(session)
    session.run(str(ROOT / "scripts" / "brokers"), "up", external=True, silent=True)
    _pytest(session, "unit", UNIT, "-m", UNIT_MARKERS)
    _pytest(session, "integration", FAST_INTEGRATION)


def _python_cell(version: str) -> None:
    interpreter = INTERPRETERS[version]

    def cell(session: nox.Session) -> None:
        if interpreter is None:
            _missing(session, version)
        _install(session, f"{ROOT}[all,dev]")
        _run_suite(session)

    cell.__doc__ = (
        f"Python {version}: .[all,dev] as uv (else pip) resolves it, unit suite + fast "
        "integration subset"
    )
    name = f"tests-{version}"
    nox.session(name=name, python=interpreter or False, tags=["matrix", *_ci_tags(name)])(cell)


for _version in PYTHONS:
    _python_cell(_version)


@nox.session(python=INTERPRETERS["3.10"] or False, tags=["matrix", *_ci_tags("oldest")])
def oldest(session: nox.Session) -> None:
    """Python 3.10, every dependency at pyproject's lower bound (contrib at the matching 0.Nb0)."""
    if INTERPRETERS["3.10"] is None:
        _missing(session, "3.10")
    constraints, dev = _oldest_pins()
    constraints_file = Path(session.create_tmp()) / "oldest-constraints.txt"
    constraints_file.write_text("\n".join(constraints) + "\n")
    session.log("oldest: constraints\n  " + "\n  ".join(constraints))
    for name, why in OLDEST_LEAVE_OUT.items():
        session.log(f"oldest: leaving out {name}: {why}")
    _install(session, "-c", str(constraints_file), f"{ROOT}[all]", *dev)
    # A reused venv may still hold a package this cell now leaves out.
    if _uses_uv(session):
        _pip(session, "uninstall", *OLDEST_LEAVE_OUT)
    else:
        _pip(session, "uninstall", "-y", "-q", *OLDEST_LEAVE_OUT)
    _pip(session, "check")
    _report_versions(session, [Requirement(line).name for line in constraints])
    _run_suite(session)


@nox.session(python=INTERPRETERS["3.13"] or False, tags=["matrix"])
def newest(session: nox.Session) -> None:
    """Python 3.13, the newest release of everything (uv pip install --upgrade)."""
    if INTERPRETERS["3.13"] is None:
        _missing(session, "3.13")
    _install(session, f"{ROOT}[all,dev]", upgrade=True)
    _report_versions(session, [r.name for r in _runtime_requirements()])
    _run_suite(session)


# Each OTel contrib release pins the API and SDK it was released with, so every cell above
# installs that SDK; `pip install hoptrace[sdk]` alone gets the SDK's newest release, which can
# be later (SDK 1.45.2 came before a contrib release for it and changed the metrics path).
# This cell installs hoptrace[all] with the dev requirements less the contrib packages, each
# at its newest, and runs the tests of what reads the SDK's internals or mirrors its steps:
# the lean metrics and span paths, the C entries, the propagators.
NEWEST_CORE_TESTS = [
    "tests/unit/test_metrics.py",
    "tests/unit/test_metrics_bench.py",
    "tests/unit/test_metrics_edges.py",
    "tests/unit/test_metrics_lean.py",
    "tests/unit/test_metrics_readerless.py",
    "tests/unit/test_kafka_send_metrics.py",
    "tests/unit/test_sdk_spans.py",
    "tests/unit/test_sdk_spans_dropped.py",
    "tests/unit/test_sdk_spans_lean.py",
    "tests/unit/test_sdk_spans_root.py",
    "tests/unit/test_consume_dropped_fast_path.py",
    "tests/unit/test_speedups.py",
    "tests/unit/test_speedups_dropped.py",
    "tests/unit/test_speedups_dropped_send.py",
    "tests/unit/test_speedups_module_reads.py",
    "tests/unit/test_speedups_pairs.py",
    "tests/unit/test_speedups_random_ids.py",
    "tests/unit/test_speedups_root.py",
    "tests/unit/test_propagation.py",
    "tests/unit/test_fuzz_extract.py",
]


def _core_dev_requirements() -> list[str]:
    """The dev requirements less OTel's contrib packages (which pin the SDK) and ddtrace."""
    return [text for text in _project()["optional-dependencies"]["dev"]
            if not Requirement(text).name.startswith((*CONTRIB_PREFIXES, "ddtrace"))]


@nox.session(name="newest-core", python=INTERPRETERS["3.13"] or False,
             tags=["matrix", *_ci_tags("newest-core")])
def newest_core(session: nox.Session) -> None:
    """Python 3.13, the newest OTel API and SDK (no contrib packages): the SDK-facing tests."""
    if INTERPRETERS["3.13"] is None:
        _missing(session, "3.13")
    _install(session, f"{ROOT}[all]", *_core_dev_requirements(), upgrade=True)
    _report_versions(session, ["opentelemetry-api", "opentelemetry-sdk"])
    _check_accelerated(session)
    _pytest(session, "unit", NEWEST_CORE_TESTS, "-m", UNIT_MARKERS)


def _report_versions(session: nox.Session, names: list[str]) -> None:
    script = (
        "import sys\n"
        "from importlib.metadata import version, PackageNotFoundError\n"
        "for name in sys.argv[1:]:\n"
        "    try: print(f'  {name} {version(name)}')\n"
        "    except PackageNotFoundError: print(f'  {name} (not installed)')\n"
    )
    session.run("python", "-c", script, *sorted(set(names)), silent=False)


if __name__ == "__main__":  # `python noxfile.py` prints the oldest cell's pins
    pins, dev_requirements = _oldest_pins()
    print("\n".join(pins))
    print("\n".join(dev_requirements))
    sys.exit(0)

