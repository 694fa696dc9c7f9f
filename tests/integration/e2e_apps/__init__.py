"""The processes of the end-to-end test (``tests/integration/test_e2e_jaeger.py``).

Each module is one service of the flow, run in its own OS process and exporting OTLP to Jaeger
with its own ``service.name``: ``web`` (WSGI edge) → ``worker`` (Celery prefork task,
confluent-kafka produce) → ``kafka_relay`` (kafka-python consume, aio-pika publish) →
``pika_sink`` (pika consume).
"""
