"""Gateway controls: inbound API keys (``--api-keys``) and rate limits, in front of the proxy.

`Guard` is the pure ASGI middleware; `keys` reads the keys file; `limits` and `redis_store`
keep the counters, in this process or in Redis.
"""
