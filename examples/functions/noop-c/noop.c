/* The smallest C function: succeeds without doing anything (for benchmarks). */
#include "sluice.h"

void sluice_handle(const sluice_event *events, size_t count) {
  (void)events;
  (void)count;
}
