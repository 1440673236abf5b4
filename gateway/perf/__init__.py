"""Load runs judged against the policy's SLOs: vegeta targets, a built-in constant-rate attacker, verdicts."""
