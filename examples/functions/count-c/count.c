/* Counting events by type, in C.
 *
 * For each event the function increments the counter `count:{type}` in its
 * key-value state (with compare-and-set, so a concurrent change fails the
 * batch, which runs again) and publishes a `type.counted` event with the new
 * count as JSON to the topic named by the OUT_TOPIC configuration value
 * (default `counts`), its subject the event's id. An event without data fails
 * on its own: it is retried, then dead-lettered with the reason. Everything it
 * writes and publishes commits atomically with the acknowledgement.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sluice.h"

/* A NUL-terminated copy of a host string. */
static char *cstr(sluice_str s) {
  char *c = malloc(s.len + 1);
  if (c == NULL) abort();
  memcpy(c, s.ptr, s.len);
  c[s.len] = 0;
  return c;
}

void sluice_handle(const sluice_event *events, size_t count) {
  sluice_str out_topic;
  bool found;
  if (sluice_config_get("OUT_TOPIC", &out_topic, &found) != 0) {
    sluice_fail_batch(sluice_last_error());
    return;
  }
  char *topic = found ? cstr(out_topic) : "counts";
  for (size_t i = 0; i < count; i++) {
    const sluice_event *e = &events[i];
    if (!e->data.is_some || e->data.val.len == 0) {
      sluice_fail_event(e, "event has no data");
      continue;
    }
    char *type = cstr(e->type);
    if (strpbrk(type, "\"\\") != NULL) {
      sluice_fail_event(e, "the event type would need JSON escaping");
      continue;
    }
    char key[300];
    snprintf(key, sizeof key, "count:%s", type);
    sluice_bytes current;
    if (sluice_kv_get(key, &current, &found) != 0) {
      sluice_fail_batch(sluice_last_error());
      return;
    }
    long n = 1;
    if (found) {
      char *text = cstr((sluice_str){(const char *)current.ptr, current.len});
      n = strtol(text, NULL, 10) + 1;
    }
    char value[24];
    int value_len = snprintf(value, sizeof value, "%ld", n);
    bool swapped;
    if (sluice_kv_compare_and_set(key, found ? &current : NULL, value, value_len, &swapped) != 0) {
      sluice_fail_batch(sluice_last_error());
      return;
    }
    if (!swapped) {
      sluice_fail_batch("a counter changed concurrently");
      return;
    }
    char data[400];
    int data_len = snprintf(data, sizeof data, "{\"type\":\"%s\",\"count\":%ld}", type, n);
    char counted[300];
    snprintf(counted, sizeof counted, "%s.counted", type);
    char *subject = cstr(e->id);
    sluice_outgoing out = {.type = counted, .subject = subject, .data = data, .data_len = data_len};
    if (sluice_publish(topic, &out) != 0) {
      sluice_fail_batch(sluice_last_error());
      return;
    }
    char line[400];
    snprintf(line, sizeof line, "%s #%ld", type, n);
    sluice_log(SLUICE_INFO, line);
  }
}
