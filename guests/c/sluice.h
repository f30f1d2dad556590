/* The Sluice guest helper for C functions.
 *
 * Write a file that includes "sluice.h" and defines
 *
 *     void sluice_handle(const sluice_event *events, size_t count);
 *
 * and build it with `scripts/build-guest c FILE.c OUT.wasm` (Debian's clang 14
 * and wasi-libc, installed pinned by scripts/guest-tools).
 *
 * Returning from sluice_handle means every event succeeded, except those
 * passed to sluice_fail_event (retried, then dead-lettered with the reason)
 * or, after sluice_fail_batch, all of them: the whole batch fails and nothing
 * it published, sent or wrote is kept. A trap (abort(), a null dereference)
 * also fails the batch. Publishing, sending and key-value writes are buffered
 * by Sluice and committed atomically with the acknowledgement of the events.
 *
 * Strings the host hands over (sluice_str) are UTF-8 and not NUL-terminated;
 * strings handed to the host are NUL-terminated C strings. Functions that can
 * be refused return 0 on success and -1 on refusal, with the host's reason in
 * sluice_last_error(). Every instance runs one invocation and is discarded,
 * so nothing needs freeing.
 *
 * The layouts below are the component model's canonical ABI for the
 * `sluice:function@0.1.0` world (wit/function.wit) on wasm32.
 */
#ifndef SLUICE_H
#define SLUICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
  const char *ptr;
  size_t len;
} sluice_str;

typedef struct {
  const uint8_t *ptr;
  size_t len;
} sluice_bytes;

typedef struct {
  bool is_some;
  sluice_str val;
} sluice_opt_str;

typedef struct {
  bool is_some;
  sluice_bytes val;
} sluice_opt_bytes;

typedef struct {
  sluice_str name;
  sluice_str value;
} sluice_extension;

/* One CloudEvents 1.0 event of the batch. `data` is JSON text when
 * `datacontenttype` is JSON (or absent), raw bytes otherwise. */
typedef struct {
  sluice_str id;
  sluice_str source;
  sluice_str type;
  sluice_opt_str subject;
  sluice_opt_str time;
  sluice_opt_str datacontenttype;
  sluice_opt_str dataschema;
  sluice_opt_bytes data;
  struct {
    const sluice_extension *ptr;
    size_t len;
  } extensions;
} sluice_event;

_Static_assert(sizeof(sluice_event) == 92, "canonical ABI layout of event");

/* The function, written by the author. */
void sluice_handle(const sluice_event *events, size_t count);

/* Marks one event failed: it is retried, the others are acknowledged. */
void sluice_fail_event(const sluice_event *event, const char *reason);
/* Fails the whole batch: no effects, every event is retried. */
void sluice_fail_batch(const char *reason);

/* The reason of the last refused call (NUL-terminated, empty if none). */
const char *sluice_last_error(void);

typedef enum {
  SLUICE_TRACE,
  SLUICE_DEBUG,
  SLUICE_INFO,
  SLUICE_WARN,
  SLUICE_ERROR,
  SLUICE_CRITICAL,
} sluice_level;

/* Writes a line to the invocation's log. */
void sluice_log(sluice_level level, const char *message);

/* An event to publish. Unset (NULL) fields are filled by Sluice: `id` (a
 * UUID) and `source` (sluice://functions/{name}). `data` must be JSON text
 * unless `datacontenttype` names another type. */
typedef struct {
  const char *type;
  const char *id;
  const char *source;
  const char *subject;
  const char *datacontenttype;
  const void *data;
  size_t data_len;
} sluice_outgoing;

/* Publishes an event to `topic` when the invocation commits. */
int sluice_publish(const char *topic, const sluice_outgoing *event);

/* Sends the JSON text `body` to `queue` when the invocation commits. `group`
 * and `dedup_id` may be NULL; a negative `delay_ms` takes the queue's default. */
int sluice_send(const char *queue, const char *body, int64_t delay_ms,
                const char *group, const char *dedup_id);

/* Reads `key` of the function's key-value state (seeing this invocation's own
 * writes). On success *found says whether it has a value, held in *value. */
int sluice_kv_get(const char *key, sluice_bytes *value, bool *found);
int sluice_kv_set(const char *key, const void *value, size_t len);
int sluice_kv_delete(const char *key);
/* Sets `key` to `value` if its value is `expected` (NULL: the key has no
 * value); *swapped says whether it did. Checked again at commit. */
int sluice_kv_compare_and_set(const char *key, const sluice_bytes *expected,
                              const void *value, size_t len, bool *swapped);

/* The configuration value `key` (`--env K=V` at deploy). */
int sluice_config_get(const char *key, sluice_str *value, bool *found);

#endif
