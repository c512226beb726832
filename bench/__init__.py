"""Benchmarks for tlproxy and for any OpenAI-compatible endpoint.

Nothing here is imported by the proxy at run time. ``python -m bench.ttft`` measures time to
first token; ``bench.fake_openai`` is a tiny streaming server to try the tools on.
"""
