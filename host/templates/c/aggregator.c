// A NexusPipe aggregator: events and event-time progress in, metric points out.
//
// This one counts events per minute by type, in 1-minute tumbling windows of
// event time. Replace it with your logic. Built with `nexuspipe plugin
// build`: the bindings aggregator.h/aggregator.c come from
// `wit-bindgen c --world aggregator`.
//
// Memory: each function owns its arguments and frees them (the *_free
// functions); everything it returns must be malloc'd (the generated code
// frees it after the host has copied it).

#include "aggregator.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef exports_nexuspipe_plugin_aggregate_event_t event_t;
typedef nexuspipe_plugin_types_metric_point_t point_t;

#define WINDOW_MS 60000

static void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) abort();
  return p;
}

static void *xrealloc(void *p, size_t n) {
  p = realloc(p, n ? n : 1);
  if (!p) abort();
  return p;
}

static void log_info(const char *message) {
  aggregator_string_t msg;
  aggregator_string_set(&msg, message);  // borrowed: the host copies it
  aggregator_list_tuple2_string_string_t fields = {NULL, 0};
  nexuspipe_plugin_host_log(NEXUSPIPE_PLUGIN_TYPES_LEVEL_INFO, &msg, &fields);
}

// ---- state: the open windows, sorted by (start, event type) ----------------

typedef struct {
  int64_t start;
  aggregator_string_t event_type;  // malloc'd
  int64_t count;
} window_t;

static window_t *windows;
static size_t n_windows, cap_windows;
static bool has_watermark;  // false before the first `process`
static int64_t watermark;   // the highest watermark seen

static void state_clear(void) {
  for (size_t i = 0; i < n_windows; i++) aggregator_string_free(&windows[i].event_type);
  free(windows);
  windows = NULL;
  n_windows = cap_windows = 0;
  has_watermark = false;
  watermark = 0;
}

// start + WINDOW_MS, without overflowing.
static int64_t window_end(int64_t start) {
  return start > INT64_MAX - WINDOW_MS ? INT64_MAX : start + WINDOW_MS;
}

static int window_cmp(int64_t start, const uint8_t *type, size_t len, const window_t *w) {
  if (start != w->start) return start < w->start ? -1 : 1;
  size_t n = len < w->event_type.len ? len : w->event_type.len;
  int c = memcmp(type, w->event_type.ptr, n);
  if (c != 0) return c;
  return len < w->event_type.len ? -1 : len > w->event_type.len ? 1 : 0;
}

// The window of (start, event type), created in order on first use.
static window_t *window_get(int64_t start, const uint8_t *type, size_t len) {
  size_t at = 0;
  while (at < n_windows) {
    int c = window_cmp(start, type, len, &windows[at]);
    if (c == 0) return &windows[at];
    if (c < 0) break;
    at++;
  }
  if (n_windows == cap_windows) {
    cap_windows = cap_windows ? cap_windows * 2 : 16;
    windows = xrealloc(windows, cap_windows * sizeof *windows);
  }
  memmove(&windows[at + 1], &windows[at], (n_windows - at) * sizeof *windows);
  n_windows++;
  windows[at].start = start;
  aggregator_string_dup_n(&windows[at].event_type, (const char *)type, len);
  windows[at].count = 0;
  return &windows[at];
}

// ---- the aggregate interface -----------------------------------------------

bool exports_nexuspipe_plugin_aggregate_init(aggregator_string_t *config,
                                             exports_nexuspipe_plugin_aggregate_host_settings_t *settings,
                                             exports_nexuspipe_plugin_aggregate_interest_t *ret,
                                             exports_nexuspipe_plugin_aggregate_config_error_t *err) {
  // Parse your config here (an empty string means the default config).
  bool has_config = config->len > 0;
  aggregator_string_free(config);
  exports_nexuspipe_plugin_aggregate_host_settings_free(settings);
  if (has_config) {
    err->field.is_some = false;
    aggregator_string_dup(&err->message, "this plugin takes no config yet");
    return false;
  }
  state_clear();
  log_info("aggregator ready");

  // What the host sends: every event type, no properties, no metadata, no
  // id / user id / session id (event type and timestamp always come).
  ret->event_types = (aggregator_list_string_t){NULL, 0};
  ret->properties.is_some = true;
  ret->properties.val = (aggregator_list_string_t){NULL, 0};
  ret->metadata = 0;
  ret->fields = 0;
  return true;
}

void exports_nexuspipe_plugin_aggregate_process(exports_nexuspipe_plugin_aggregate_list_event_t *events,
                                                int64_t wm,
                                                exports_nexuspipe_plugin_aggregate_aggregate_output_t *ret) {
  // 1. Add the events. Your logic here.
  uint32_t *late = NULL;
  size_t n_late = 0;
  for (size_t i = 0; i < events->len; i++) {
    const event_t *e = &events->ptr[i];
    int64_t start = e->timestamp - (((e->timestamp % WINDOW_MS) + WINDOW_MS) % WINDOW_MS);
    if (has_watermark && window_end(start) <= watermark) {
      // Its window was already emitted: the host reports the event as late.
      late = xrealloc(late, (n_late + 1) * sizeof *late);
      late[n_late++] = (uint32_t)i;
      continue;
    }
    window_get(start, e->event_type.ptr, e->event_type.len)->count++;
  }
  exports_nexuspipe_plugin_aggregate_list_event_free(events);

  // 2. Event time moves to the watermark (never backwards).
  if (!has_watermark || wm > watermark) watermark = wm;
  has_watermark = true;

  // 3. Emit and forget every window that closed. The windows are sorted, so
  // the closed ones come first, oldest first.
  size_t n = 0;
  while (n < n_windows && window_end(windows[n].start) <= watermark) n++;
  point_t *points = n ? xmalloc(n * sizeof *points) : NULL;
  for (size_t i = 0; i < n; i++) {
    point_t *p = &points[i];
    aggregator_string_dup(&p->measurement, "events_per_minute");
    p->tags.len = 1;
    p->tags.ptr = xmalloc(sizeof *p->tags.ptr);
    aggregator_string_dup(&p->tags.ptr[0].f0, "event_type");
    p->tags.ptr[0].f1 = windows[i].event_type;  // handed over to the host
    p->fields.len = 1;
    p->fields.ptr = xmalloc(sizeof *p->fields.ptr);
    aggregator_string_dup(&p->fields.ptr[0].f0, "count");
    p->fields.ptr[0].f1.tag = NEXUSPIPE_PLUGIN_TYPES_VALUE_INT;
    p->fields.ptr[0].f1.val.int_ = windows[i].count;
    p->timestamp = windows[i].start;
  }
  memmove(windows, windows + n, (n_windows - n) * sizeof *windows);
  n_windows -= n;

  ret->points = (nexuspipe_plugin_types_list_metric_point_t){points, n};
  ret->late = (aggregator_list_u32_t){late, n_late};
}

// ---- snapshot / restore ----------------------------------------------------
//
// All state as bytes, for checkpoints and upgrades. A small text format:
//   events-per-minute 1
//   watermark <ms>          (or: watermark none)
//   <start> <count> <length of event type> <event type>   (one line per window)

#define HEADER "events-per-minute 1\n"

typedef struct {
  char *ptr;
  size_t len;
} buf_t;

static void buf_printf(buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void buf_printf(buf_t *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  b->ptr = xrealloc(b->ptr, b->len + (size_t)n + 1);
  va_start(ap, fmt);
  vsnprintf(b->ptr + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
}

void exports_nexuspipe_plugin_aggregate_snapshot(aggregator_list_u8_t *ret) {
  buf_t b = {NULL, 0};
  buf_printf(&b, HEADER);
  if (has_watermark) buf_printf(&b, "watermark %" PRId64 "\n", watermark);
  else buf_printf(&b, "watermark none\n");
  for (size_t i = 0; i < n_windows; i++) {
    const window_t *w = &windows[i];
    buf_printf(&b, "%" PRId64 " %" PRId64 " %zu %.*s\n", w->start, w->count, w->event_type.len,
               (int)w->event_type.len, (const char *)w->event_type.ptr);
  }
  ret->ptr = (uint8_t *)b.ptr;
  ret->len = b.len;
}

// Parses the snapshot `text` (NUL-terminated, `len` bytes); false if malformed.
static bool parse_state(const char *text, size_t len) {
  const char *p = text, *end = text + len;
  if (len < strlen(HEADER) || memcmp(p, HEADER, strlen(HEADER)) != 0) return false;
  p += strlen(HEADER);
  int used = 0;
  if (strncmp(p, "watermark none\n", 15) == 0) {
    p += 15;
  } else if (sscanf(p, "watermark %" SCNd64 "%n", &watermark, &used) == 1 && p[used] == '\n') {
    has_watermark = true;
    p += used + 1;
  } else {
    return false;
  }
  while (p < end) {
    int64_t start, count;
    size_t tlen;
    if (sscanf(p, "%" SCNd64 " %" SCNd64 " %zu%n", &start, &count, &tlen, &used) != 3) return false;
    p += used;
    if (*p != ' ' || tlen >= (size_t)(end - p) || p[1 + tlen] != '\n') return false;
    window_get(start, (const uint8_t *)p + 1, tlen)->count = count;
    p += 1 + tlen + 1;
  }
  return true;
}

bool exports_nexuspipe_plugin_aggregate_restore(aggregator_list_u8_t *state,
                                                exports_nexuspipe_plugin_aggregate_restored_t *ret,
                                                exports_nexuspipe_plugin_aggregate_state_error_t *err) {
  state_clear();
  bool ok = true;
  if (state->len > 0) {  // empty bytes: empty state
    char *text = xmalloc(state->len + 1);
    memcpy(text, state->ptr, state->len);
    text[state->len] = 0;
    ok = parse_state(text, state->len);
    free(text);
  }
  aggregator_list_u8_free(state);
  if (!ok) {
    state_clear();
    aggregator_string_dup(&err->message, "state not understood by this version (expected \"events-per-minute 1\")");
    return false;
  }
  memset(ret, 0, sizeof *ret);  // kept, reset, dropped, added: all empty
  return true;
}
