"""An enricher: sees each batch of events and returns changes to them
(patch, drop, emit). This one sets ``is_mobile`` from the user agent.

Built by ``nexuspipe plugin build`` with componentize-py against ``wit/``
(world ``enricher``); ``wit_world`` is generated from it at build time.
"""

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host, types


class Enrich(exports.Enrich):
    def init(self, config: str, settings: types.HostSettings) -> types.Interest:
        # The plugin's config text (--config, [[plugins]] config, ?config=):
        # parse it here; a ConfigError names the field that is wrong.
        if config.strip():
            raise Err(types.ConfigError(field=None, message="this plugin takes no config yet"))
        host.log(types.Level.INFO, "ready", [])
        # What the plugin reads: every event type, no properties, the user
        # agent. The host sends nothing else, which keeps calls cheap.
        return types.Interest(
            event_types=[],
            properties=[],
            metadata=types.MetadataFields.USER_AGENT,
            fields=types.EventFields(0),
        )

    def process(self, events):
        changes = []
        for i, event in enumerate(events):
            # Your logic here.
            ua = event.metadata.user_agent or ""
            changes.append(
                types.Change_Patch(
                    types.EventPatch(
                        index=i,
                        event_type=None,
                        user_id=None,
                        session_id=None,
                        set_properties=[types.Property("is_mobile", types.Value_Boolean("Mobile" in ua))],
                        remove_properties=[],
                        metadata=None,
                    )
                )
            )
        return changes
