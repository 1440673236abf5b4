"""The audit trail (gateway.audit.trail), its record format and streams (record), and its two stores:
files (files) and Redis Streams (redis). The names other modules use are re-exported here."""

from gateway.audit.files import FileStore
from gateway.audit.record import Batch, Entry, Record, encode, iso, stream_of
from gateway.audit.redis import RedisStore
from gateway.audit.trail import AuditTrail, Store, build_audit

__all__ = ["AuditTrail", "Batch", "Entry", "FileStore", "Record", "RedisStore", "Store", "build_audit",
           "encode", "iso", "stream_of"]
