"""The JSON Lines exporter and the span-file reader (hoptrace JSONL and OTLP JSON)."""

from __future__ import annotations

import io
import json

import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Link, SpanKind

import hoptrace
from hoptrace.cli.spanfile import SpanFileError, group_traces, link_sends, read_spans
from hoptrace.core import semconv
from hoptrace.export import JsonLinesSpanExporter


@pytest.fixture
def exported(tmp_path):
    """A global SDK provider (service ``shop``) exporting to a JSONL file; yields the path."""
    path = tmp_path / "spans.jsonl"
    provider = TracerProvider(resource=Resource.create({"service.name": "shop"}))
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(path)))
    previous = trace._TRACER_PROVIDER
    trace._TRACER_PROVIDER = provider
    try:
        yield path
    finally:
        trace._TRACER_PROVIDER = previous
        provider.shutdown()


def test_each_span_is_one_json_line_with_ids_kind_times_status_and_service(exported):
    with hoptrace.transaction("checkout") as tx:
        with hoptrace.produce_scope({}, "orders", "rabbitmq") as send:
            headers = send.carrier
    with pytest.raises(ValueError), hoptrace.consume_scope(headers, "orders", "rabbitmq"):
        raise ValueError("bad order")
    lines = exported.read_text().splitlines()
    records = {r["name"]: r for r in map(json.loads, lines)}
    assert len(lines) == 3
    root, sent, processed = records["checkout"], records["send orders"], records["process orders"]
    assert root["parent_span_id"] is None
    assert sent["parent_span_id"] == root["span_id"]
    assert processed["parent_span_id"] == sent["span_id"]
    assert {r["trace_id"] for r in records.values()} == {root["trace_id"]}
    assert headers["traceparent"].split("-")[1] == root["trace_id"]
    assert (sent["kind"], processed["kind"]) == ("PRODUCER", "CONSUMER")
    assert all(r["service"] == "shop" for r in records.values())
    assert all(r["end_ns"] >= r["start_ns"] > 0 for r in records.values())
    assert processed["status"] == "ERROR"
    assert "bad order" in processed["status_message"]
    assert [e["name"] for e in processed["events"]] == ["exception"]
    assert processed["attributes"][semconv.TRANSACTION_ID] == tx.transaction_id
    assert processed["attributes"][semconv.QUEUE_WAIT_MS] >= 0


def test_links_and_array_attributes_round_trip_through_the_reader(exported):
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("first") as first:
        pass
    with tracer.start_as_current_span(
        "second",
        kind=SpanKind.CONSUMER,
        links=[Link(first.get_span_context(), {"reason": "retry"})],
        attributes={"tags": ("a", "b")},
    ):
        pass
    spans = {s.name: s for s in read_spans(exported)}
    second = spans["second"]
    assert second.kind == "CONSUMER"
    assert second.attributes["tags"] == ["a", "b"]
    assert second.links == [
        {
            "trace_id": f"{first.get_span_context().trace_id:032x}",
            "span_id": f"{first.get_span_context().span_id:016x}",
            "attributes": {"reason": "retry"},
        }
    ]
    assert spans["first"].duration_ms >= 0


def test_exporter_writes_to_an_open_stream_and_survives_shutdown():
    stream = io.StringIO()
    exporter = JsonLinesSpanExporter(stream)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    provider.get_tracer("t").start_span("one").end()
    provider.shutdown()
    assert json.loads(stream.getvalue())["name"] == "one"
    assert not stream.closed  # not ours to close
    assert exporter.export([]).name == "FAILURE"  # after shutdown


OTLP_LINE = {
    "resourceSpans": [
        {
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "billing"}}]},
            "scopeSpans": [
                {
                    "scope": {"name": "x"},
                    "spans": [
                        {
                            "traceId": "5B8EFFF798038103D269B633813FC60C",
                            "spanId": "EEE19B7EC3C1B174",
                            "parentSpanId": "",
                            "name": "send invoices",
                            "kind": 4,
                            "startTimeUnixNano": "1544712660000000000",
                            "endTimeUnixNano": "1544712661000000000",
                            "attributes": [
                                {"key": "messaging.destination.name", "value": {"stringValue": "invoices"}},
                                {"key": "retries", "value": {"intValue": "3"}},
                                {"key": "ok", "value": {"boolValue": True}},
                                {"key": "ratio", "value": {"doubleValue": 0.5}},
                                {"key": "ids", "value": {"arrayValue": {"values": [{"intValue": "1"}, {"intValue": "2"}]}}},
                            ],
                            "status": {},
                        },
                        {
                            "traceId": "5b8efff798038103d269b633813fc60c",
                            "spanId": "eee19b7ec3c1b175",
                            "parentSpanId": "eee19b7ec3c1b174",
                            "name": "process invoices",
                            "kind": "SPAN_KIND_CONSUMER",
                            "startTimeUnixNano": "1544712662000000000",
                            "endTimeUnixNano": "1544712663500000000",
                            "status": {"code": "STATUS_CODE_ERROR", "message": "boom"},
                            "events": [{"name": "exception", "timeUnixNano": "1544712663000000000"}],
                            "links": [{"traceId": "aa" * 16, "spanId": "bb" * 8}],
                        },
                    ],
                }
            ],
        }
    ]
}


def test_reads_otlp_json_as_the_collector_file_exporter_writes_it(tmp_path):
    path = tmp_path / "otlp.json"
    path.write_text(json.dumps(OTLP_LINE) + "\n" + json.dumps(OTLP_LINE).replace("FC60C", "FC60D").replace("fc60c", "fc60d") + "\n")
    spans = read_spans(path)
    assert len(spans) == 4
    send, process = spans[0], spans[1]
    assert send.trace_id == "5b8efff798038103d269b633813fc60c"
    assert (send.kind, send.service, send.parent_span_id) == ("PRODUCER", "billing", None)
    assert send.attributes == {
        "messaging.destination.name": "invoices", "retries": 3, "ok": True, "ratio": 0.5, "ids": [1, 2]
    }
    assert process.kind == "CONSUMER" and process.status == "ERROR"
    assert process.status_message == "boom"
    assert process.parent_span_id == send.span_id
    assert process.duration_ms == (1544712663500000000 - 1544712662000000000) / 1e6
    assert process.events[0]["name"] == "exception"
    assert process.links[0]["span_id"] == "bb" * 8
    assert len(group_traces(spans)) == 2


def test_reads_one_pretty_printed_otlp_document(tmp_path):
    path = tmp_path / "otlp-pretty.json"
    path.write_text(json.dumps(OTLP_LINE, indent=2))
    assert [s.name for s in read_spans(path)] == ["send invoices", "process invoices"]


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("{not json", "invalid JSON"),
        ('{"trace_id": "' + "a" * 32 + '", "span_id": "' + "b" * 16 + '", "name": "x"}', "missing field 'start_ns'"),
        ('{"trace_id": "abc", "span_id": "' + "b" * 16 + '", "name": "x", "start_ns": 1, "end_ns": 2}', "trace_id must be 32 hex"),
        ('{"something": "else"}', "neither a hoptrace span"),
        ("[1, 2]", "expected a JSON object"),
        ('{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "' + "a" * 32 + '", "spanId": "' + "b" * 16 + '"}]}]}]}', "missing field 'startTimeUnixNano'"),
    ],
)
def test_malformed_line_names_the_file_and_line_number(tmp_path, exported, bad_line, message):
    with hoptrace.transaction("ok"):
        pass
    good = exported.read_text()
    path = tmp_path / "bad.jsonl"
    path.write_text(good + good + "\n" + bad_line + "\n" + good)
    with pytest.raises(SpanFileError) as raised:
        read_spans(path)
    assert raised.value.line == 4
    assert str(raised.value).startswith(f"{path}:4: ")
    assert message in str(raised.value)


def test_progress_reports_bytes_read_up_to_the_file_size(tmp_path, exported):
    with hoptrace.transaction("one"):
        pass
    line = exported.read_text()
    path = tmp_path / "many.jsonl"
    path.write_text(line * 40_000)
    seen: list[int] = []
    assert len(read_spans(path, seen.append)) == 40_000
    assert seen == sorted(seen) and len(seen) >= 3
    assert seen[-1] == path.stat().st_size


def test_kafka_wait_from_a_millisecond_timestamp_is_read_back_clamped(exported):
    """A Kafka record without a send-time header: the wait comes from its CreateTime (whole
    ms); the reader never lets that wait begin before the send span."""
    from hoptrace import _kafka

    with hoptrace.transaction("checkout"):
        send = _kafka.send_scope("orders", None, b"k")
        headers = send.carrier
        send.close()
    (sent,) = [s for s in read_spans(exported) if s.kind == "PRODUCER"]
    # Whole milliseconds, before the send span's: the send time it implies lies before the
    # send span started. (20 ms before, not 1: the wait as recorded runs from the consumer's
    # clock read, and its span starts later by however long the scheduler holds the test in
    # between, which on a loaded machine has exceeded 1 ms.)
    create_ms = sent.start_ns // 1_000_000 - 20
    with _kafka.record_scope("orders", 0, 41, b"k", headers, create_ms, "billing"):
        pass
    with hoptrace.transaction("stamped"):
        stamped = _kafka.send_scope("orders", None, None, timestamp_given=True)
        stamped_headers = stamped.carrier
        stamped.close()
    with _kafka.record_scope("orders", 0, 42, None, stamped_headers, create_ms, "billing"):
        pass

    spans = read_spans(exported)
    process = {s.attributes[semconv.KAFKA_OFFSET]: s for s in spans if s.kind == "CONSUMER"}
    coarse, fine = process[41], process[42]
    # No precision mark is written: the reader clamps every wait to its send span.
    assert "hoptrace.queue_wait.precision_ms" not in coarse.attributes
    recorded = coarse.attributes[semconv.QUEUE_WAIT_MS]
    assert coarse.start_ns - recorded * 1e6 < sent.start_ns  # as recorded: before the send
    link_sends(spans)
    assert coarse.send_start_ns == sent.start_ns
    assert coarse.queue_wait_start_ns == sent.start_ns
    assert coarse.queue_wait_ms == (coarse.start_ns - sent.start_ns) / 1e6 < recorded
    assert fine.queue_wait_ms == fine.attributes[semconv.QUEUE_WAIT_MS]
