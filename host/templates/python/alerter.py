"""An alerter: sees events with the watermark and returns alerts. This one
fires an alert for every ``error`` event.

Built by ``nexuspipe plugin build`` with componentize-py against ``wit/``
(world ``alerter``); ``wit_world`` is generated from it at build time.
"""

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host, types


class Alerting(exports.Alerting):
    def init(self, config: str, settings: types.HostSettings) -> types.Interest:
        # The plugin's config text: parse it here.
        if config.strip():
            raise Err(types.ConfigError(field=None, message="this plugin takes no config yet"))
        host.log(types.Level.INFO, "ready", [])
        # Only `error` events, with their id and user.
        return types.Interest(
            event_types=["error"],
            properties=[],
            metadata=types.MetadataFields(0),
            fields=types.EventFields.ID | types.EventFields.USER_ID,
        )

    def process(self, events, watermark: int) -> types.AlertOutput:
        alerts = []
        for event in events:
            if event.event_type != "error":
                continue
            # Your logic here: a rule over events (and state, across calls).
            key = event.user_id or "anonymous"
            alerts.append(
                types.Alert(
                    rule_id="error_event",
                    key=key,
                    status=types.AlertStatus.FIRING,
                    severity=types.Severity.WARNING,
                    summary=f"an error from {key}",
                    labels=[("rule", "error_event")],
                    starts_at=event.timestamp,
                    ends_at=None,
                    # Stable across replays, so receivers deduplicate.
                    fingerprint=event.id,
                )
            )
        return types.AlertOutput(alerts=alerts, late=[])

    def snapshot(self) -> bytes:
        # Nothing is kept between calls yet; state you add goes here.
        return b""

    def restore(self, state: bytes) -> types.Restored:
        return types.Restored(kept=[], reset=[], dropped=[], added=[])
