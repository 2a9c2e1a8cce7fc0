"""The client side: every httpx call behind the resilience layer (instrumentor, transports, call core, breakers, budgets, probes)."""
