"""The Sluice guest helper for Python functions.

Write a module with ``def handle(events)`` and build it with
``scripts/build-guest python DIR OUT.wasm``. Each event is an :class:`Event`
whose ``data`` is already decoded from JSON when its content type is JSON.

``handle`` returns:

* ``None`` (or nothing): every event succeeded;
* a dict ``{event_id: reason}`` or a list of ids: those events failed and
  are retried, the others are acknowledged;

and any exception it raises fails the whole batch with the exception's
traceback as the error, so that nothing it published or wrote is kept.

Publishing, sending and key-value writes are buffered by Sluice and committed
atomically with the acknowledgement of the input events.
"""

import json
import traceback

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import config as _config
from wit_world.imports import keyvalue as _kv
from wit_world.imports import logging as _logging
from wit_world.imports import messaging as _messaging
from wit_world.imports import types as _types

__all__ = ["Event", "publish", "send", "kv", "config", "log", "SluiceError"]


class SluiceError(Exception):
    """A host call was refused (unknown topic or queue, invalid event, limits)."""


def _is_json(content_type):
    if content_type is None:
        return True
    base = content_type.split(";", 1)[0].strip().lower()
    return base == "application/json" or base.endswith("+json")


class Event:
    """One CloudEvent of the batch."""

    __slots__ = ("id", "source", "type", "subject", "time", "datacontenttype",
                 "dataschema", "data", "raw_data", "extensions")

    def __init__(self, e):
        self.id = e.id
        self.source = e.source
        self.type = e.event_type
        self.subject = e.subject
        self.time = e.time
        self.datacontenttype = e.datacontenttype
        self.dataschema = e.dataschema
        self.raw_data = e.data
        self.extensions = dict(e.extensions)
        if e.data is not None and _is_json(e.datacontenttype):
            self.data = json.loads(e.data)
        else:
            self.data = e.data

    def __repr__(self):
        return f"Event(id={self.id!r}, type={self.type!r}, subject={self.subject!r})"


def _encode(value):
    if value is None:
        return None, None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), "application/octet-stream"
    return json.dumps(value, separators=(",", ":")).encode(), "application/json"


def publish(topic, type, data=None, *, subject=None, id=None, source=None,
            datacontenttype=None, extensions=None):
    """Publish an event to ``topic`` when the invocation commits.

    ``data`` is JSON-encoded unless it is bytes."""
    body, default_type = _encode(data)
    try:
        _messaging.publish(topic, _messaging.OutgoingEvent(
            event_type=type, id=id, source=source, subject=subject,
            datacontenttype=datacontenttype or default_type, data=body,
            extensions=list((extensions or {}).items())))
    except Err as e:
        raise SluiceError(e.value) from None


def send(queue, body, *, delay_ms=None, group=None, dedup_id=None):
    """Send a JSON message to ``queue`` when the invocation commits."""
    text = body if isinstance(body, str) else json.dumps(body, separators=(",", ":"))
    try:
        _messaging.send(queue, text, _messaging.SendOptions(
            delay_ms=delay_ms, group=group, dedup_id=dedup_id))
    except Err as e:
        raise SluiceError(e.value) from None


def _kv_call(f, *args):
    try:
        return f(*args)
    except Err as e:
        v = e.value
        raise SluiceError(getattr(v, "value", None) or type(v).__name__) from None


def _to_bytes(value):
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value, separators=(",", ":")).encode()


class _KeyValue:
    """Key-value state of this function. Writes commit with the invocation."""

    def get(self, key):
        return _kv_call(_kv.get, key)

    def get_json(self, key, default=None):
        raw = self.get(key)
        return default if raw is None else json.loads(raw)

    def set(self, key, value):
        """Set ``key``; str is UTF-8 encoded, other non-bytes values JSON-encoded."""
        _kv_call(_kv.set, key, _to_bytes(value))

    def delete(self, key):
        _kv_call(_kv.delete, key)

    def exists(self, key):
        return _kv_call(_kv.exists, key)

    def keys(self, prefix="", cursor=None):
        return _kv_call(_kv.list_keys, prefix, cursor)

    def compare_and_set(self, key, expected, value):
        """Set ``key`` to ``value`` if it is ``expected`` (None: absent)."""
        exp = None if expected is None else _to_bytes(expected)
        return _kv_call(_kv.compare_and_set, key, exp, _to_bytes(value))


kv = _KeyValue()


class _Config:
    def get(self, key, default=None):
        value = _config.get(key)
        return default if value is None else value

    def all(self):
        return dict(_config.get_all())


config = _Config()

_LEVELS = {
    "trace": _logging.Level.TRACE, "debug": _logging.Level.DEBUG,
    "info": _logging.Level.INFO, "warn": _logging.Level.WARN,
    "error": _logging.Level.ERROR, "critical": _logging.Level.CRITICAL,
}


def log(message, level="info", context=""):
    """Write a line to this invocation's log."""
    _logging.log(_LEVELS[level], context, str(message))


def _outcome(result, events):
    if result is None or result is True:
        return _types.Outcome_Success()
    if isinstance(result, dict):
        failed = [_types.FailedEvent(id=str(k), reason=str(v)) for k, v in result.items()]
    else:
        failed = [_types.FailedEvent(id=str(k), reason="failed") for k in result]
    if not failed:
        return _types.Outcome_Success()
    return _types.Outcome_PartialFailure(failed)


def make_handler(handle):
    """The exported handler class around the user's ``handle(events)``."""

    class Handler(exports.Handler):
        def handle(self, events):
            try:
                batch = [Event(e) for e in events]
                return _outcome(handle(batch), batch)
            except BaseException:  # any escape would trap the instance
                return _types.Outcome_Error(traceback.format_exc(limit=20))

    return Handler
