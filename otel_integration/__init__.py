"""otel-integration: OpenTelemetry-native resilience and correlation for httpx."""
