"""The ops surface: /api/ops/*, /metrics, admin authentication, audit."""
