"""hoptrace's engine: knows OpenTelemetry and header carriers, and no client library."""

#: The package version (``hoptrace.__version__``), here so the engine names its tracer and
#: meter without importing the package around it.
__version__ = "0.1.0"
