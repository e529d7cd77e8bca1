// A NexusPipe alerter: events and event-time progress in, alerts out.
//
// This one raises an alert for every `error` event. Replace it with your
// rules. Built with `nexuspipe plugin build`: the bindings alerter.h/alerter.c
// come from `wit-bindgen c --world alerter`.
//
// Memory: each function owns its arguments and frees them (the *_free
// functions); everything it returns must be malloc'd (the generated code
// frees it after the host has copied it).

#include "alerter.h"

#include <stdlib.h>
#include <string.h>

typedef exports_nexuspipe_plugin_alerting_event_t event_t;
typedef nexuspipe_plugin_types_alert_t alert_t;

static void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) abort();
  return p;
}

static void log_info(const char *message) {
  alerter_string_t msg;
  alerter_string_set(&msg, message);  // borrowed: the host copies it
  alerter_list_tuple2_string_string_t fields = {NULL, 0};
  nexuspipe_plugin_host_log(NEXUSPIPE_PLUGIN_TYPES_LEVEL_INFO, &msg, &fields);
}

bool exports_nexuspipe_plugin_alerting_init(alerter_string_t *config,
                                            exports_nexuspipe_plugin_alerting_host_settings_t *settings,
                                            exports_nexuspipe_plugin_alerting_interest_t *ret,
                                            exports_nexuspipe_plugin_alerting_config_error_t *err) {
  // Parse your config here (an empty string means the default config).
  bool has_config = config->len > 0;
  alerter_string_free(config);
  exports_nexuspipe_plugin_alerting_host_settings_free(settings);
  if (has_config) {
    err->field.is_some = false;
    alerter_string_dup(&err->message, "this plugin takes no config yet");
    return false;
  }
  log_info("alerter ready");

  // What the host sends: `error` events only, no properties, no metadata,
  // with their id and user id.
  ret->event_types.len = 1;
  ret->event_types.ptr = xmalloc(sizeof(alerter_string_t));
  alerter_string_dup(&ret->event_types.ptr[0], "error");
  ret->properties.is_some = true;
  ret->properties.val = (alerter_list_string_t){NULL, 0};
  ret->metadata = 0;
  ret->fields = NEXUSPIPE_PLUGIN_TYPES_EVENT_FIELDS_ID | NEXUSPIPE_PLUGIN_TYPES_EVENT_FIELDS_USER_ID;
  return true;
}

void exports_nexuspipe_plugin_alerting_process(exports_nexuspipe_plugin_alerting_list_event_t *events,
                                               int64_t watermark,
                                               exports_nexuspipe_plugin_alerting_alert_output_t *ret) {
  alert_t *alerts = events->len ? xmalloc(events->len * sizeof *alerts) : NULL;
  size_t n = 0;
  for (size_t i = 0; i < events->len; i++) {
    const event_t *e = &events->ptr[i];
    // Your rules here.
    if (e->event_type.len != 5 || memcmp(e->event_type.ptr, "error", 5) != 0) continue;
    alert_t *a = &alerts[n++];
    memset(a, 0, sizeof *a);
    alerter_string_dup(&a->rule_id, "error_event");
    if (e->user_id.is_some) alerter_string_dup_n(&a->key, (const char *)e->user_id.val.ptr, e->user_id.val.len);
    else alerter_string_dup(&a->key, "anonymous");
    a->status = NEXUSPIPE_PLUGIN_TYPES_ALERT_STATUS_FIRING;
    a->severity = NEXUSPIPE_PLUGIN_TYPES_SEVERITY_WARNING;
    // summary = "an error from " + key
    const char *prefix = "an error from ";
    size_t plen = strlen(prefix);
    a->summary.len = plen + a->key.len;
    a->summary.ptr = xmalloc(a->summary.len);
    memcpy(a->summary.ptr, prefix, plen);
    memcpy(a->summary.ptr + plen, a->key.ptr, a->key.len);
    a->labels.len = 1;
    a->labels.ptr = xmalloc(sizeof *a->labels.ptr);
    alerter_string_dup(&a->labels.ptr[0].f0, "rule");
    alerter_string_dup(&a->labels.ptr[0].f1, "error_event");
    a->starts_at = e->timestamp;
    a->ends_at.is_some = false;
    alerter_string_dup_n(&a->fingerprint, (const char *)e->id.ptr, e->id.len);
  }
  exports_nexuspipe_plugin_alerting_list_event_free(events);
  if (n == 0) {
    free(alerts);
    alerts = NULL;
  }
  ret->alerts = (nexuspipe_plugin_types_list_alert_t){alerts, n};
  ret->late = (alerter_list_u32_t){NULL, 0};
}

// This alerter keeps no state between batches; a windowed rule would
// serialize its state here and read it back in `restore`.
void exports_nexuspipe_plugin_alerting_snapshot(alerter_list_u8_t *ret) {
  ret->ptr = NULL;
  ret->len = 0;
}

bool exports_nexuspipe_plugin_alerting_restore(alerter_list_u8_t *state,
                                               exports_nexuspipe_plugin_alerting_restored_t *ret,
                                               exports_nexuspipe_plugin_alerting_state_error_t *err) {
  alerter_list_u8_free(state);
  memset(ret, 0, sizeof *ret);  // kept, reset, dropped, added: all empty
  return true;
}
