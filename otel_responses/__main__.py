"""``python -m otel_responses``: the same as the ``otel-responses`` command."""

from otel_responses.cli import main

main()
