"""An aggregator: keeps state across batches and emits metric points as
event time (the watermark) passes. This one counts events per type in
one-minute tumbling windows.

Built by ``nexuspipe plugin build`` with componentize-py against ``wit/``
(world ``aggregator``); ``wit_world`` is generated from it at build time.
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host, types

WINDOW_MS = 60_000

# Open windows: (window start, event type) -> events counted; and the
# highest watermark seen (windows ending at or before it are out).
windows = {}
last_watermark = None


class Aggregate(exports.Aggregate):
    def init(self, config: str, settings: types.HostSettings) -> types.Interest:
        global windows, last_watermark
        # The plugin's config text: parse it here.
        if config.strip():
            raise Err(types.ConfigError(field=None, message="this plugin takes no config yet"))
        windows, last_watermark = {}, None
        host.log(types.Level.INFO, "ready", [])
        # Every event type; no properties, metadata or ids are needed.
        return types.Interest(
            event_types=[],
            properties=[],
            metadata=types.MetadataFields(0),
            fields=types.EventFields(0),
        )

    def process(self, events, watermark: int) -> types.AggregateOutput:
        global last_watermark
        late = []
        for i, event in enumerate(events):
            start = event.timestamp - event.timestamp % WINDOW_MS
            # Its window was emitted already: the host records it as late.
            if last_watermark is not None and start + WINDOW_MS <= last_watermark:
                late.append(i)
                continue
            # Your logic here.
            key = (start, event.event_type)
            windows[key] = windows.get(key, 0) + 1
        last_watermark = watermark if last_watermark is None else max(last_watermark, watermark)
        # Windows that event time has passed, in (start, type) order.
        points = []
        for start, event_type in sorted(windows):
            if start + WINDOW_MS > watermark:
                break
            points.append(
                types.MetricPoint(
                    measurement="events_per_minute",
                    tags=[("event_type", event_type)],
                    fields=[("count", types.Value_Int(windows.pop((start, event_type))))],
                    timestamp=start,
                )
            )
        return types.AggregateOutput(points=points, late=late)

    def snapshot(self) -> bytes:
        # The state as bytes, for checkpoints and new versions.
        state = {"watermark": last_watermark, "windows": [[s, t, n] for (s, t), n in windows.items()]}
        return json.dumps(state).encode()

    def restore(self, state: bytes) -> types.Restored:
        global windows, last_watermark
        try:
            raw = json.loads(state) if state else {"watermark": None, "windows": []}
            restored = {(int(s), str(t)): int(n) for s, t, n in raw["windows"]}
            watermark = raw["watermark"]
        except (ValueError, KeyError, TypeError) as e:
            raise Err(types.StateError(message=f"unreadable state: {e}"))
        windows, last_watermark = restored, watermark
        return types.Restored(kept=[], reset=[], dropped=[], added=[])
