"""Load runs judged against the policy's SLOs, and the overhead benchmark: the optional `perf` extra.

Not part of the runtime: the `gateway` package never imports this one (`gateway perf` finds it through the
`gateway.commands` entry point), and this one uses the gateway's public API only (docs/architecture-rules.md).
"""
