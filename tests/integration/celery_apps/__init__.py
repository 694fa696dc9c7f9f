"""Celery apps that integration tests run in real worker processes."""
