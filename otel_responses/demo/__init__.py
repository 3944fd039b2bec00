"""The built-in deterministic upstream (Responses and Chat Completions) used by demo mode, tests
and benchmarks."""

from otel_responses.demo.app import DemoSettings, create_demo_app, get_observer
from otel_responses.demo.observe import DemoObserver, RecordedRequest, StreamRecord

__all__ = ["DemoObserver", "DemoSettings", "RecordedRequest", "StreamRecord", "create_demo_app",
           "get_observer"]
