"""End to end across real OS processes, read back from a real Jaeger.

The flow, one OS process per service, each exporting OTLP/HTTP with its own ``service.name``
and logging JSON lines with hoptrace's fields to stderr (``e2e_apps/``)::

    HTTP POST ─► web (wsgiref + hoptrace.wsgi)
                  └─ Celery send ─► RabbitMQ ─► worker (Celery prefork child)
                                                  └─ confluent-kafka produce ─► Kafka
                       kafka-relay (kafka-python consumer) ◄─┘
                        └─ aio-pika publish ─► RabbitMQ ─► pika-sink (pika basic_consume)

Three requests, each its own transaction. Everything asserted comes from Jaeger's api/v3 (OTLP
JSON) and from the processes' captured log lines: one trace per request holding spans from all
four services, one root and no orphan, the parent chain in hop order, the request's
transaction ID (and the right trace and span) in every process's log lines, and
``hoptrace.queue_wait_ms`` on every consumer span.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import backends
import brokers
import pytest

pytestmark = pytest.mark.integration

for _module in ("celery", "confluent_kafka", "kafka", "aio_pika", "pika",
                "opentelemetry.exporter.otlp.proto.http.trace_exporter"):
    pytest.importorskip(_module)

HERE = Path(__file__).resolve().parent
REQUESTS = 3
STARTUP_TIMEOUT = 60.0
JAEGER_TIMEOUT = 60.0
TASK_NAME = "e2e.relay"  # e2e_apps.telemetry.TASK_NAME (not imported: it reads the env)
WEB, WORKER, RELAY, SINK = "web", "worker", "kafka-relay", "pika-sink"
SERVICES = (WEB, WORKER, RELAY, SINK)
# How many spans each service makes per request: its side of each hop (plus the web's SERVER).
SPANS_PER_REQUEST = {WEB: 2, WORKER: 2, RELAY: 2, SINK: 1}
KINDS = {1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}

# ----------------------------------------------------------------------------- Jaeger ---
# The Jaeger comes from backends.py (HOPTRACE_JAEGER_URL, HOPTRACE_JAEGER_OTLP_URL).


@dataclass(frozen=True)
class Jaeger:
    """A Jaeger answering: its query API and the OTLP/HTTP endpoint the processes export to."""

    query_url: str
    otlp_endpoint: str

    def get(self, path: str, **params: str) -> dict[str, Any]:
        url = f"{self.query_url}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read())  # type: ignore[no-any-return]
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return {}
            raise

    def trace(self, trace_id: str) -> list[Span]:
        """The spans of one trace (api/v3), or [] while Jaeger has none of it."""
        return parse_otlp(self.get(f"/api/v3/traces/{trace_id}").get("result"))

    def search(self, service: str, since: datetime) -> list[Span]:
        """Every span of every trace with a span from ``service`` since ``since`` (api/v3)."""
        until = datetime.now(timezone.utc) + timedelta(minutes=1)
        found = self.get(
            "/api/v3/traces",
            **{
                "query.service_name": service,
                "query.start_time_min": since.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "query.start_time_max": until.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                # Jaeger 1.76's memory store rejects query.search_depth without max_traces set.
                "query.num_traces": "100",
            },
        )
        return parse_otlp(found.get("result"))


@pytest.fixture(scope="module")
def jaeger() -> Jaeger:
    """The Jaeger to export to and query; skips (fails under CI) when it does not answer."""
    query_url = backends.jaeger_query_url()
    return Jaeger(query_url, backends.jaeger_otlp_url(query_url))


# ------------------------------------------------------------------------- OTLP JSON ---


@dataclass(frozen=True)
class Span:
    """One span read back from Jaeger."""

    service: str
    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: str
    start_ns: int
    attributes: dict[str, Any]

    def __str__(self) -> str:
        return f"{self.service}/{self.kind} {self.name!r} {self.span_id}<-{self.parent_id}"


def otlp_value(value: dict[str, Any]) -> Any:
    """Decode an OTLP JSON ``AnyValue``."""
    if "stringValue" in value:
        return value["stringValue"]
    if "intValue" in value:
        return int(value["intValue"])
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "arrayValue" in value:
        return [otlp_value(v) for v in value["arrayValue"].get("values", [])]
    return None


def otlp_attributes(items: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {item["key"]: otlp_value(item.get("value", {})) for item in items or ()}


def parse_otlp(result: dict[str, Any] | None) -> list[Span]:
    """The spans of an OTLP JSON ``TracesData`` (what api/v3 wraps in ``{"result": ...}``)."""
    spans = []
    for resource_spans in (result or {}).get("resourceSpans", []):
        resource = otlp_attributes(resource_spans.get("resource", {}).get("attributes"))
        service = str(resource.get("service.name", ""))
        for scope_spans in resource_spans.get("scopeSpans", []):
            for raw in scope_spans.get("spans", []):
                kind = raw.get("kind", 0)
                spans.append(Span(
                    service=service,
                    trace_id=raw["traceId"],
                    span_id=raw["spanId"],
                    parent_id=raw.get("parentSpanId") or None,
                    name=raw["name"],
                    kind=KINDS.get(kind, str(kind).removeprefix("SPAN_KIND_")),
                    start_ns=int(raw.get("startTimeUnixNano", 0)),
                    attributes=otlp_attributes(raw.get("attributes")),
                ))
    return spans


# ------------------------------------------------------------------------- processes ---


@dataclass
class Service:
    """One service of the flow, running as its own OS process (its own process group)."""

    role: str
    argv: list[str]
    out: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def stderr_path(self) -> Path:
        return self.out / f"{self.role}.stderr"

    def start(self, env: dict[str, str]) -> None:
        stdout = (self.out / f"{self.role}.stdout").open("wb")
        stderr = self.stderr_path.open("wb")
        self.process = subprocess.Popen(self.argv, env=env, cwd=str(HERE), stdout=stdout,
                                        stderr=stderr, start_new_session=True)
        stdout.close()
        stderr.close()

    def logs(self) -> list[dict[str, Any]]:
        """The JSON log records on the process's stderr so far (other lines skipped)."""
        records = []
        if self.stderr_path.exists():
            for line in self.stderr_path.read_text(errors="replace").splitlines():
                if line.startswith("{"):
                    with suppress(json.JSONDecodeError):
                        records.append(json.loads(line))
        return records

    def logged(self, message: Callable[[str], bool]) -> list[dict[str, Any]]:
        return [r for r in self.logs() if message(str(r.get("message", "")))]

    def mentioning(self, text: str) -> list[dict[str, Any]]:
        """The JSON log records whose message contains ``text``."""
        return [r for r in self.logs() if text in str(r.get("message", ""))]

    def wait_logged(self, message: Callable[[str], bool], deadline: float) -> dict[str, Any]:
        """The first record whose message matches, once it is logged (fails past ``deadline``)."""
        while True:
            found = self.logged(message)
            if found:
                return found[0]
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"{self.role} exited ({self.process.returncode}) early")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.role} never logged what the test waits for")
            time.sleep(0.1)

    def tail(self, chars: int = 3000) -> str:
        text = ""
        for path in (self.out / f"{self.role}.stdout", self.stderr_path):
            if path.exists() and path.stat().st_size:
                text += f"--- {self.role} {path.suffix[1:]} (tail) ---\n"
                text += path.read_text(errors="replace")[-chars:] + "\n"
        return text

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM (each process flushes its spans and exits), then kill the whole group."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            with suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=grace)
        # Whatever is left (a prefork child, a process that ignored SIGTERM) is killed.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        return self.process.returncode


@dataclass
class Request:
    """One HTTP request the test sent, and what the web service answered."""

    order: str
    transaction_id: str
    body: dict[str, Any]

    @property
    def trace_id(self) -> str:
        return str(self.body["trace_id"])


@dataclass
class Flow:
    """A run of the whole flow: its names, processes, requests and what Jaeger holds."""

    run: str
    topic: str
    celery_queue: str
    amqp_queue: str
    jaeger: Jaeger
    started: datetime
    services: dict[str, Service] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    by_service: dict[str, list[Span]] = field(default_factory=dict)
    traces: dict[str, list[Span]] = field(default_factory=dict)
    waited: float = 0.0

    def service_name(self, role: str) -> str:
        return f"hoptrace-e2e-{self.run}-{role}"

    def role_of(self, span: Span) -> str:
        return span.service.removeprefix(f"hoptrace-e2e-{self.run}-")

    def read_jaeger(self) -> None:
        self.by_service = {role: self.jaeger.search(self.service_name(role), self.started)
                           for role in SERVICES}
        self.traces = {r.trace_id: self.jaeger.trace(r.trace_id) for r in self.requests}

    def spans_per_service(self) -> dict[str, int]:
        return {role: len({s.span_id for s in spans if s.service == self.service_name(role)})
                for role, spans in self.by_service.items()}

    def complete(self) -> bool:
        counts = self.spans_per_service()
        return all(counts.get(role, 0) >= n * REQUESTS for role, n in SPANS_PER_REQUEST.items())

    def explain(self) -> str:
        lines = [f"run {self.run}: topic {self.topic}, queues {self.celery_queue}, "
                 f"{self.amqp_queue}; waited {self.waited:.1f}s for Jaeger; spans per service "
                 f"{self.spans_per_service()}"]
        for trace_id, spans in self.traces.items():
            lines.append(f"trace {trace_id}:")
            lines.extend(f"  {s}" for s in sorted(spans, key=lambda s: s.start_ns))
        lines.extend(service.tail() for service in self.services.values())
        return "\n".join(lines)

    @contextmanager
    def explained(self) -> Iterator[None]:
        """On failure, print what Jaeger holds and every process's output tail."""
        try:
            yield
        except BaseException:
            print(self.explain())
            raise


def create_topic(bootstrap: str, topic: str) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        future.result(30)


def delete_amqp(amqp_url: str, queues: list[str], exchanges: list[str]) -> None:
    """Delete the run's queues and exchanges (best effort)."""
    import pika  # type: ignore[import-untyped]

    with suppress(Exception):
        connection = pika.BlockingConnection(pika.URLParameters(brokers.pika_url(amqp_url)))
        try:
            channel = connection.channel()
            for queue in queues:
                channel.queue_delete(queue)
            for exchange in exchanges:
                channel.exchange_delete(exchange)
        finally:
            connection.close()


def post(port: int, order: str) -> Request:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/orders/{order}", data=b"",
                                     method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 202
        return Request(order, response.headers.get("X-Transaction-ID", ""),
                       json.loads(response.read()))


@pytest.fixture(scope="module")
def flow(jaeger: Jaeger, amqp_url: str, kafka_bootstrap: str,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    """Start the four services, send the requests, and wait until Jaeger has every span."""
    run = uuid.uuid4().hex[:10]
    prefix = f"hoptrace-e2e-{run}"
    state = Flow(run=run, topic=f"{prefix}-orders", celery_queue=f"{prefix}-celery",
                 amqp_queue=f"{prefix}-shipping", jaeger=jaeger,
                 started=datetime.now(timezone.utc) - timedelta(seconds=5))
    out = tmp_path_factory.mktemp("e2e")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "HOPTRACE_"))}
    env.update({
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
        "PYTHONUNBUFFERED": "1",
        "OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_endpoint,
        "E2E_SERVICE_PREFIX": prefix,
        "E2E_CELERY_BROKER": amqp_url,
        "E2E_PIKA_URL": brokers.pika_url(amqp_url),
        "E2E_AIO_PIKA_URL": brokers.pika_url(amqp_url).replace("/%2F", "/"),
        "E2E_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "E2E_CELERY_QUEUE": state.celery_queue,
        "E2E_TOPIC": state.topic,
        "E2E_AMQP_QUEUE": state.amqp_queue,
    })
    python = sys.executable
    state.services = {
        WEB: Service(WEB, [python, "-m", "e2e_apps.web"], out),
        WORKER: Service(WORKER, [
            python, "-m", "celery", "-A", "e2e_apps.worker:app", "worker", "-P", "prefork",
            "-c", "2", "-Q", state.celery_queue, "-n", f"{prefix}@%h", "--without-gossip",
            "--without-mingle", "--without-heartbeat", "-l", "INFO",
        ], out),
        RELAY: Service(RELAY, [python, "-m", "e2e_apps.kafka_relay"], out),
        SINK: Service(SINK, [python, "-m", "e2e_apps.pika_sink"], out),
    }
    create_topic(kafka_bootstrap, state.topic)
    try:
        with state.explained():
            for service in state.services.values():
                service.start(env)
            deadline = time.monotonic() + STARTUP_TIMEOUT
            listening = state.services[WEB].wait_logged(
                lambda m: m.startswith("listening on "), deadline)
            for role in (WORKER, RELAY, SINK):
                state.services[role].wait_logged(lambda m: m == "ready", deadline)
            port = int(str(listening["message"]).rsplit(":", 1)[1])
            state.requests = [post(port, f"{run}-{n}") for n in range(REQUESTS)]
            # Wait until Jaeger holds every service's spans, wherever they landed: a hop that
            # loses the context still ends the wait, and the tests then say what is wrong.
            started = time.monotonic()
            while True:
                state.read_jaeger()
                if state.complete() or time.monotonic() - started > JAEGER_TIMEOUT:
                    break
                time.sleep(0.25)
            state.waited = time.monotonic() - started
        yield state
    finally:
        for service in state.services.values():
            service.stop()
        # Celery declares a direct exchange named after its queue.
        delete_amqp(amqp_url, [state.celery_queue, state.amqp_queue], [state.celery_queue])
        brokers.delete_kafka_topics(kafka_bootstrap, [state.topic])


# ----------------------------------------------------------------------------- checks ---


def expected_chain(flow: Flow) -> list[tuple[str, str, str | None]]:
    """(service, kind, span name) of each span of one request, in hop order."""
    queue = flow.amqp_queue  # through the default exchange: the destination is the queue
    return [
        (WEB, "SERVER", None),  # named by the HTTP edge: "POST" or "POST {route}"
        (WEB, "PRODUCER", f"send {TASK_NAME}"),
        (WORKER, "CONSUMER", f"process {TASK_NAME}"),
        (WORKER, "PRODUCER", f"send {flow.topic}"),
        (RELAY, "CONSUMER", f"process {flow.topic}"),
        (RELAY, "PRODUCER", f"send {queue}"),
        (SINK, "CONSUMER", f"process {queue}"),
    ]


def chain_of(flow: Flow, request: Request) -> list[Span]:
    """The request's trace as its hops, in order; asserts each hop is there exactly once."""
    spans = flow.traces[request.trace_id]
    chain = []
    for role, kind, name in expected_chain(flow):
        found = [s for s in spans if flow.role_of(s) == role and s.kind == kind
                 and (name is None or s.name == name)]
        assert len(found) == 1, f"{request.order}: want one {role} {kind} {name!r}, got {found}"
        chain.append(found[0])
    return chain


def test_every_request_is_one_trace_with_every_service(flow: Flow) -> None:
    with flow.explained():
        assert flow.complete(), f"Jaeger never got every span: {flow.spans_per_service()}"
        assert len({r.trace_id for r in flow.requests}) == REQUESTS
        assert len({r.transaction_id for r in flow.requests}) == REQUESTS
        for request in flow.requests:
            spans = flow.traces[request.trace_id]
            assert {s.trace_id for s in spans} == {request.trace_id}
            assert {flow.role_of(s) for s in spans} == set(SERVICES), request.order
            assert len(spans) == len(expected_chain(flow)), request.order


def test_no_orphan_and_no_stray_trace(flow: Flow) -> None:
    with flow.explained():
        for request in flow.requests:
            spans = flow.traces[request.trace_id]
            ids = {s.span_id for s in spans}
            roots = [s for s in spans if s.parent_id is None]
            assert len(roots) == 1, f"{request.order}: roots {roots}"
            assert roots[0].kind == "SERVER" and flow.role_of(roots[0]) == WEB
            orphans = [s for s in spans if s.parent_id is not None and s.parent_id not in ids]
            assert orphans == [], f"{request.order}: parent not in the trace: {orphans}"
        # No service started a trace of its own: every trace any of them is in is a request's.
        for role, spans in flow.by_service.items():
            assert {s.trace_id for s in spans} <= {r.trace_id for r in flow.requests}, role


def test_parent_chain_follows_the_hops_in_order(flow: Flow) -> None:
    with flow.explained():
        for request in flow.requests:
            chain = chain_of(flow, request)
            assert chain[0].parent_id is None
            assert chain[0].name.startswith("POST")
            for parent, child in itertools.pairwise(chain):
                assert child.parent_id == parent.span_id, f"{request.order}: {parent} -> {child}"
                assert child.start_ns >= parent.start_ns, f"{request.order}: {parent} -> {child}"
            assert chain[0].attributes.get("hoptrace.transaction.id") == request.transaction_id


def test_queue_wait_on_every_consumer_span(flow: Flow) -> None:
    with flow.explained():
        for request in flow.requests:
            consumers = [s for s in flow.traces[request.trace_id] if s.kind == "CONSUMER"]
            assert [flow.role_of(s) for s in sorted(consumers, key=lambda s: s.start_ns)] == [
                WORKER, RELAY, SINK]
            for span in consumers:
                wait = span.attributes.get("hoptrace.queue_wait_ms")
                assert isinstance(wait, (int, float)) and wait >= 0, f"{span}: {wait!r}"


def test_transaction_id_in_every_process_log_lines(flow: Flow) -> None:
    with flow.explained():
        # The line each process logs about an order, and the span it must be logged in.
        said = {WEB: "order {} accepted", WORKER: "order {}: producing to kafka",
                RELAY: "order {}: publishing to rabbitmq", SINK: "order {}: delivered"}
        in_span = {WEB: 0, WORKER: 2, RELAY: 4, SINK: 6}
        for request in flow.requests:
            assert request.transaction_id, "no X-Transaction-ID response header"
            assert request.body["transaction_id"] == request.transaction_id
            chain = chain_of(flow, request)
            for role, service in flow.services.items():
                lines = service.mentioning(f"order {request.order}")
                assert [r["message"] for r in lines] == [said[role].format(request.order)], role
                (line,) = lines
                assert line.get("transaction_id") == request.transaction_id, (role, line)
                assert line.get("trace_id") == request.trace_id, (role, line)
                assert line.get("span_id") == chain[in_span[role]].span_id, (role, line)
        # Celery's own line about each task, logged in the worker, carries the ID as well.
        for request in flow.requests:
            done = flow.services[WORKER].mentioning(f"[{request.body['task_id']}] succeeded")
            assert [r.get("transaction_id") for r in done] == [request.transaction_id]


def test_every_process_flushes_and_exits_on_sigterm(flow: Flow) -> None:
    with flow.explained():
        codes = {role: service.stop() for role, service in flow.services.items()}
        assert codes == dict.fromkeys(SERVICES, 0)
        for role, service in flow.services.items():
            assert service.logged(lambda m: m == "stopped"), role
