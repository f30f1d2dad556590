// The Sluice guest helper for JavaScript functions.
//
// Write a module with `export function handle(events)` and build it with
// `scripts/build-guest js FILE OUT.wasm`; the helpers below (publish, send,
// kv, config, log) are in scope. Each event's `data` is already decoded from
// JSON when its content type is JSON.
//
// `handle` returns nothing (every event succeeded) or an object
// `{ eventId: reason }` / an array of ids (those events failed and are
// retried). A thrown error fails the whole batch: nothing it published or
// wrote is kept. Effects commit atomically with the acknowledgement.
import * as __sluiceMessaging from "sluice:function/messaging@0.1.0";
import * as __sluiceKv from "sluice:function/keyvalue@0.1.0";
import * as __sluiceConfig from "sluice:function/config@0.1.0";
import * as __sluiceLogging from "sluice:function/logging@0.1.0";

const __sluiceEncoder = new TextEncoder();
const __sluiceDecoder = new TextDecoder();

class SluiceError extends Error {}

function __sluiceIsJson(contentType) {
  if (contentType === undefined) return true;
  const base = contentType.split(";")[0].trim().toLowerCase();
  return base === "application/json" || base.endsWith("+json");
}

function __sluiceCall(f) {
  try {
    return f();
  } catch (e) {
    const payload = e && e.payload !== undefined ? e.payload : e;
    const text = typeof payload === "string" ? payload
      : payload && payload.val !== undefined ? String(payload.val)
      : payload && payload.tag ? payload.tag : String(payload);
    throw new SluiceError(text);
  }
}

function __sluiceBytes(value) {
  if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  if (typeof value === "string") return __sluiceEncoder.encode(value);
  return __sluiceEncoder.encode(JSON.stringify(value));
}

function publish(topic, type, data, options = {}) {
  let bytes, contentType;
  if (data !== undefined && data !== null) {
    if (data instanceof Uint8Array) {
      bytes = data;
      contentType = "application/octet-stream";
    } else {
      bytes = __sluiceEncoder.encode(JSON.stringify(data));
      contentType = "application/json";
    }
  }
  __sluiceCall(() => __sluiceMessaging.publish(topic, {
    eventType: type,
    id: options.id,
    source: options.source,
    subject: options.subject,
    datacontenttype: options.datacontenttype ?? contentType,
    data: bytes,
    extensions: Object.entries(options.extensions ?? {}),
  }));
}

function send(queue, body, options = {}) {
  const text = typeof body === "string" ? body : JSON.stringify(body);
  __sluiceCall(() => __sluiceMessaging.send(queue, text, {
    delayMs: options.delayMs === undefined ? undefined : BigInt(options.delayMs),
    group: options.group,
    dedupId: options.dedupId,
  }));
}

const kv = {
  get: (key) => __sluiceCall(() => __sluiceKv.get(key)),
  getJson(key, fallback = undefined) {
    const raw = this.get(key);
    return raw === undefined ? fallback : JSON.parse(__sluiceDecoder.decode(raw));
  },
  set: (key, value) => __sluiceCall(() => __sluiceKv.set(key, __sluiceBytes(value))),
  delete: (key) => __sluiceCall(() => __sluiceKv.delete(key)),
  exists: (key) => __sluiceCall(() => __sluiceKv.exists(key)),
  keys: (prefix = "", cursor = undefined) => __sluiceCall(() => __sluiceKv.listKeys(prefix, cursor)),
  compareAndSet: (key, expected, value) => __sluiceCall(() => __sluiceKv.compareAndSet(
    key, expected === undefined || expected === null ? undefined : __sluiceBytes(expected),
    __sluiceBytes(value))),
};

const config = {
  get: (key, fallback = undefined) => __sluiceConfig.get(key) ?? fallback,
  all: () => Object.fromEntries(__sluiceConfig.getAll()),
};

function log(message, level = "info", context = "") {
  __sluiceLogging.log(level, context, String(message));
}

function __sluiceEvent(e) {
  let data = e.data;
  if (data !== undefined && __sluiceIsJson(e.datacontenttype)) {
    data = JSON.parse(__sluiceDecoder.decode(data));
  }
  return {
    id: e.id, source: e.source, type: e.eventType, subject: e.subject, time: e.time,
    datacontenttype: e.datacontenttype, dataschema: e.dataschema, data, rawData: e.data,
    extensions: Object.fromEntries(e.extensions),
  };
}

function __sluiceRun(handle, events) {
  try {
    const result = handle(events.map(__sluiceEvent));
    if (result === undefined || result === null || result === true) return { tag: "success" };
    const failed = Array.isArray(result)
      ? result.map((id) => ({ id: String(id), reason: "failed" }))
      : Object.entries(result).map(([id, reason]) => ({ id, reason: String(reason) }));
    return failed.length === 0 ? { tag: "success" } : { tag: "partial-failure", val: failed };
  } catch (e) {
    return { tag: "error", val: e && e.stack ? `${e}\n${e.stack}` : String(e) };
  }
}
