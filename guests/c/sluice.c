/* The Sluice guest helper for C functions: the canonical-ABI glue between
 * the `sluice:function@0.1.0` world and the plain C API of sluice.h. */
#include "sluice.h"

#include <stdlib.h>
#include <string.h>

#define IMPORT(iface, fn) \
  __attribute__((import_module("sluice:function/" iface "@0.1.0"), import_name(fn)))

IMPORT("logging", "log")
extern void sluice_import_log(int32_t level, const char *ctx, size_t ctx_len,
                              const char *msg, size_t msg_len);
IMPORT("messaging", "publish")
extern void sluice_import_publish(void *params, void *ret);
IMPORT("messaging", "send")
extern void sluice_import_send(const char *queue, size_t queue_len, const char *body,
                               size_t body_len, int32_t has_delay, int64_t delay,
                               int32_t has_group, const char *group, size_t group_len,
                               int32_t has_dedup, const char *dedup, size_t dedup_len,
                               void *ret);
IMPORT("keyvalue", "get")
extern void sluice_import_kv_get(const char *key, size_t key_len, void *ret);
IMPORT("keyvalue", "set")
extern void sluice_import_kv_set(const char *key, size_t key_len, const void *value,
                                 size_t value_len, void *ret);
IMPORT("keyvalue", "delete")
extern void sluice_import_kv_delete(const char *key, size_t key_len, void *ret);
IMPORT("keyvalue", "compare-and-set")
extern void sluice_import_kv_cas(const char *key, size_t key_len, int32_t has_expected,
                                 const void *expected, size_t expected_len,
                                 const void *value, size_t value_len, void *ret);
IMPORT("config", "get")
extern void sluice_import_config_get(const char *key, size_t key_len, void *ret);

/* Memory the host asks for: the events it passes in and the values it returns. */
__attribute__((export_name("cabi_realloc"))) void *cabi_realloc(void *old, size_t old_size,
                                                                size_t align,
                                                                size_t new_size) {
  (void)old_size;
  if (new_size == 0) return (void *)align;
  void *p = realloc(old, new_size);
  if (p == NULL) abort();
  return p;
}

static sluice_str str_of(const char *s) {
  sluice_str r = {s, s == NULL ? 0 : strlen(s)};
  return r;
}

static sluice_opt_str opt_str_of(const char *s) {
  sluice_opt_str r = {s != NULL, str_of(s)};
  return r;
}

/* The last refusal, NUL-terminated. */
static char *last_error = NULL;

const char *sluice_last_error(void) { return last_error == NULL ? "" : last_error; }

static int refused(const char *ptr, size_t len) {
  free(last_error);
  last_error = malloc(len + 1);
  if (last_error == NULL) abort();
  memcpy(last_error, ptr, len);
  last_error[len] = 0;
  return -1;
}

/* The canonical-ABI return areas: a discriminant, then a payload at offset 4. */
typedef struct {
  uint8_t tag;
  sluice_str message;
} result_str; /* result<_, string> */

typedef struct {
  uint8_t tag; /* result: 0 ok, 1 err */
  union {
    struct {
      uint8_t tag; /* option (ok) or error case (err) */
      sluice_str payload;
    } inner;
    bool flag; /* result<bool, _> */
  } u;
} result_inner;

/* keyvalue.error: access-denied (0) or other(string) (1). */
static int kv_refused(const result_inner *r) {
  if (r->u.inner.tag == 0) {
    static const char denied[] = "access denied: the key or value is over the limit, or the key is empty";
    return refused(denied, sizeof denied - 1);
  }
  return refused(r->u.inner.payload.ptr, r->u.inner.payload.len);
}

void sluice_log(sluice_level level, const char *message) {
  sluice_import_log((int32_t)level, "", 0, message, strlen(message));
}

int sluice_publish(const char *topic, const sluice_outgoing *e) {
  struct {
    sluice_str topic;
    sluice_str type;
    sluice_opt_str id;
    sluice_opt_str source;
    sluice_opt_str subject;
    sluice_opt_str datacontenttype;
    sluice_opt_bytes data;
    struct {
      const sluice_extension *ptr;
      size_t len;
    } extensions;
  } params = {
      str_of(topic),
      str_of(e->type),
      opt_str_of(e->id),
      opt_str_of(e->source),
      opt_str_of(e->subject),
      opt_str_of(e->datacontenttype),
      {e->data != NULL, {e->data, e->data_len}},
      {NULL, 0},
  };
  _Static_assert(sizeof params == 84, "canonical ABI layout of (string, outgoing-event)");
  result_str ret;
  sluice_import_publish(&params, &ret);
  return ret.tag == 0 ? 0 : refused(ret.message.ptr, ret.message.len);
}

int sluice_send(const char *queue, const char *body, int64_t delay_ms, const char *group,
                const char *dedup_id) {
  result_str ret;
  sluice_import_send(queue, strlen(queue), body, strlen(body), delay_ms >= 0,
                     delay_ms >= 0 ? delay_ms : 0, group != NULL, group,
                     group == NULL ? 0 : strlen(group), dedup_id != NULL, dedup_id,
                     dedup_id == NULL ? 0 : strlen(dedup_id), &ret);
  return ret.tag == 0 ? 0 : refused(ret.message.ptr, ret.message.len);
}

int sluice_kv_get(const char *key, sluice_bytes *value, bool *found) {
  result_inner ret;
  sluice_import_kv_get(key, strlen(key), &ret);
  if (ret.tag != 0) return kv_refused(&ret);
  *found = ret.u.inner.tag != 0;
  value->ptr = (const uint8_t *)ret.u.inner.payload.ptr;
  value->len = *found ? ret.u.inner.payload.len : 0;
  return 0;
}

int sluice_kv_set(const char *key, const void *value, size_t len) {
  result_inner ret;
  sluice_import_kv_set(key, strlen(key), value, len, &ret);
  return ret.tag == 0 ? 0 : kv_refused(&ret);
}

int sluice_kv_delete(const char *key) {
  result_inner ret;
  sluice_import_kv_delete(key, strlen(key), &ret);
  return ret.tag == 0 ? 0 : kv_refused(&ret);
}

int sluice_kv_compare_and_set(const char *key, const sluice_bytes *expected, const void *value,
                              size_t len, bool *swapped) {
  result_inner ret;
  sluice_import_kv_cas(key, strlen(key), expected != NULL,
                       expected == NULL ? NULL : expected->ptr,
                       expected == NULL ? 0 : expected->len, value, len, &ret);
  if (ret.tag != 0) return kv_refused(&ret);
  *swapped = ret.u.flag;
  return 0;
}

int sluice_config_get(const char *key, sluice_str *value, bool *found) {
  result_inner ret;
  sluice_import_config_get(key, strlen(key), &ret);
  if (ret.tag != 0) return refused(ret.u.inner.payload.ptr, ret.u.inner.payload.len);
  *found = ret.u.inner.tag != 0;
  value->ptr = *found ? ret.u.inner.payload.ptr : "";
  value->len = *found ? ret.u.inner.payload.len : 0;
  return 0;
}

/* The batch's outcome, built by sluice_fail_event and sluice_fail_batch. */
typedef struct {
  sluice_str id;
  sluice_str reason;
} failed_event;

static failed_event *failed = NULL;
static size_t failed_len = 0, failed_cap = 0;
static char *batch_error = NULL;

static char *copy(const char *s) {
  size_t n = strlen(s);
  char *c = malloc(n + 1);
  if (c == NULL) abort();
  memcpy(c, s, n + 1);
  return c;
}

void sluice_fail_event(const sluice_event *event, const char *reason) {
  if (failed_len == failed_cap) {
    failed_cap = failed_cap == 0 ? 8 : failed_cap * 2;
    failed = realloc(failed, failed_cap * sizeof *failed);
    if (failed == NULL) abort();
  }
  failed[failed_len].id = event->id;
  failed[failed_len].reason = str_of(copy(reason));
  failed_len++;
}

void sluice_fail_batch(const char *reason) {
  free(batch_error);
  batch_error = copy(reason);
}

/* outcome: success (0), partial-failure(list<failed-event>) (1), error(string) (2). */
static struct {
  uint8_t tag;
  const void *ptr;
  size_t len;
} outcome;

__attribute__((export_name("sluice:function/handler@0.1.0#handle"))) void *sluice_export_handle(
    const sluice_event *events, size_t count) {
  failed_len = 0;
  free(batch_error);
  batch_error = NULL;
  sluice_handle(events, count);
  if (batch_error != NULL) {
    outcome.tag = 2;
    outcome.ptr = batch_error;
    outcome.len = strlen(batch_error);
  } else if (failed_len > 0) {
    outcome.tag = 1;
    outcome.ptr = failed;
    outcome.len = failed_len;
  } else {
    outcome.tag = 0;
  }
  return &outcome;
}
