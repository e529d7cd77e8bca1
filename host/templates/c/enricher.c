// A NexusPipe enricher: gets a batch of events, returns what to change.
//
// This one sets the property `is_mobile` on every event, from its user agent.
// Replace it with your logic. Built with `nexuspipe plugin build`: the
// bindings enricher.h/enricher.c come from `wit-bindgen c --world enricher`.
//
// Memory: each function owns its arguments and frees them (the *_free
// functions); everything it returns must be malloc'd (the generated code
// frees it after the host has copied it).

#include "enricher.h"

#include <stdlib.h>
#include <string.h>

typedef exports_nexuspipe_plugin_enrich_event_t event_t;
typedef exports_nexuspipe_plugin_enrich_change_t change_t;

static void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) abort();
  return p;
}

static void log_info(const char *message) {
  enricher_string_t msg;
  enricher_string_set(&msg, message);  // borrowed: the host copies it
  enricher_list_tuple2_string_string_t fields = {NULL, 0};
  nexuspipe_plugin_host_log(NEXUSPIPE_PLUGIN_TYPES_LEVEL_INFO, &msg, &fields);
}

// Whether the string `s` contains `needle`.
static bool contains(const enricher_string_t *s, const char *needle) {
  size_t n = strlen(needle);
  for (size_t i = 0; i + n <= s->len; i++) {
    if (memcmp(s->ptr + i, needle, n) == 0) return true;
  }
  return false;
}

bool exports_nexuspipe_plugin_enrich_init(enricher_string_t *config,
                                          exports_nexuspipe_plugin_enrich_host_settings_t *settings,
                                          exports_nexuspipe_plugin_enrich_interest_t *ret,
                                          exports_nexuspipe_plugin_enrich_config_error_t *err) {
  // Parse your config here (an empty string means the default config).
  bool has_config = config->len > 0;
  enricher_string_free(config);
  exports_nexuspipe_plugin_enrich_host_settings_free(settings);
  if (has_config) {
    err->field.is_some = false;
    enricher_string_dup(&err->message, "this plugin takes no config yet");
    return false;
  }
  log_info("enricher ready");

  // What the host sends: every event type (empty list), no properties, only
  // the user agent from the metadata, no id / user id / session id.
  ret->event_types = (enricher_list_string_t){NULL, 0};
  ret->properties.is_some = true;
  ret->properties.val = (enricher_list_string_t){NULL, 0};
  ret->metadata = NEXUSPIPE_PLUGIN_TYPES_METADATA_FIELDS_USER_AGENT;
  ret->fields = 0;
  return true;
}

void exports_nexuspipe_plugin_enrich_process(exports_nexuspipe_plugin_enrich_list_event_t *events,
                                             exports_nexuspipe_plugin_enrich_list_change_t *ret) {
  size_t n = events->len;
  change_t *changes = n ? xmalloc(n * sizeof *changes) : NULL;
  for (size_t i = 0; i < n; i++) {
    const event_t *e = &events->ptr[i];
    // Your logic here: return a patch, a drop or an emit for any event.
    // Events not mentioned pass through unchanged.
    bool is_mobile = e->metadata.user_agent.is_some && contains(&e->metadata.user_agent.val, "Mobile");

    change_t *c = &changes[i];
    memset(c, 0, sizeof *c);  // every option `none`, every list empty
    c->tag = NEXUSPIPE_PLUGIN_TYPES_CHANGE_PATCH;
    c->val.patch.index = (uint32_t)i;
    nexuspipe_plugin_types_property_t *p = xmalloc(sizeof *p);
    enricher_string_dup(&p->key, "is_mobile");
    p->value.tag = NEXUSPIPE_PLUGIN_TYPES_VALUE_BOOLEAN;
    p->value.val.boolean = is_mobile;
    c->val.patch.set_properties = (nexuspipe_plugin_types_list_property_t){p, 1};
  }
  exports_nexuspipe_plugin_enrich_list_event_free(events);
  ret->ptr = changes;
  ret->len = n;
}
