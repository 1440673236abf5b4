"""The upstream seam: how the gateway talks to the services behind it, and nothing of its policies.

`client` holds `UpstreamClient` (one per upstream: base URL, in-flight cap, its pool) and `open_upstream`;
`pool` is the lean keep-alive HTTP/1.1 pool for plain http:// upstreams, `https` the aiohttp ClientSession
path for https:// ones. Both answer with an `UpstreamReply` (`reply`); failures are `UpstreamError`
(`errors`); `methods` says which methods may be sent twice. Nothing here imports the policy engine (limits,
breakers, SLO, ops): the pipeline decides, this package only carries bytes.
"""
