"""The policy: a frozen model of policies.yaml, its loader and its units."""
