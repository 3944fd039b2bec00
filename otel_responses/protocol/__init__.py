"""Sans-IO Responses protocol: SSE parsing, stream accumulation, attribute mapping."""
