"""The built-in deterministic Responses upstream used by demo mode, tests and benchmarks."""
