"""Rate limits: named token buckets kept in Redis (shared by replicas) or in-process, enforced per route.

`bucket` holds the math, `memory` and `redis` only do I/O, `limiter` turns a request into one check of all its
limits, `headers` renders the IETF RateLimit fields, `overrides` keeps runtime rate changes.
"""
