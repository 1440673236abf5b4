"""What the gateway's processes share: the workers of one host (`serve --workers N`) and replicas on many
hosts sharing one Redis.

- `instance.py`: each process's id (default host:pid), shown in health, audit events and the fleet view.
- `slo.py`: every process publishes its SLO window counts to Redis about once a second, off the request path;
  `GET /api/ops/metrics` merges them into the fleet's view.
- `supervisor.py`: `serve --workers N`, the parent that binds the listener once and keeps N workers running.
- `workers.py`: what the workers of one supervisor share through a private directory: status (policy
  version) for health, metric samples for one `/metrics` over all workers, and relayed ops actions.
"""
