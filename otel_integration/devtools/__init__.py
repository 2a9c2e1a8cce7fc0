"""Developer tools: a real OTLP/HTTP receiver (`receiver.OTLPReceiver`, ``otel-integration receive``) and the terminal trace view (`traceview`).

Used by the tests, the demo and ``otel-integration receive``; never loaded by
the distro at start-up.
"""
