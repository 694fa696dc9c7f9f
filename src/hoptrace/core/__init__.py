"""hoptrace's engine: knows OpenTelemetry and header carriers, and no client library."""
