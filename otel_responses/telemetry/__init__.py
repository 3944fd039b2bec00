"""Observing Responses traffic: middleware, recorder, spans, metrics, export."""
