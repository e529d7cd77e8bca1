"""bot-filter: a NexusPipe enricher in Python.

Drops (or tags) events whose ``metadata.user_agent`` looks like a bot, a
crawler, a command-line HTTP client or a headless browser. Built into a
component with componentize-py against the repo's ``wit/`` (world
``enricher``); see README.md.
"""

import json
import re

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host, types

# Case-insensitive regular expressions (Python `re` syntax), matched anywhere
# in the user agent. The defaults cover the common crawlers, HTTP libraries and
# browser-automation tools.
DEFAULT_PATTERNS = [
    r"bot\b",
    r"crawl",
    r"spider",
    r"slurp",
    r"headless",
    r"phantomjs",
    r"puppeteer",
    r"playwright",
    r"selenium",
    r"webdriver",
    r"lighthouse",
    r"^curl/",
    r"^wget/",
    r"python-requests",
    r"python-urllib",
    r"go-http-client",
    r"okhttp",
    r"scrapy",
    r"facebookexternalhit",
]

CONFIG_KEYS = {"patterns", "extra_patterns", "action", "drop_missing"}


class Config:
    def __init__(self, regex, action, drop_missing):
        self.regex = regex
        self.action = action
        self.drop_missing = drop_missing


# Set by init; the host calls init before any other export.
CONFIG = None


def config_error(field, message):
    return Err(types.ConfigError(field=field, message=message))


def parse_config(text):
    """Parses the JSON config (empty text: the defaults); raises Err(ConfigError)."""
    raw = {}
    if text.strip():
        try:
            raw = json.loads(text)
        except ValueError as e:
            raise config_error(None, f"config is not valid JSON: {e}")
        if not isinstance(raw, dict):
            raise config_error(None, "config must be a JSON object")
    for key in raw:
        if key not in CONFIG_KEYS:
            raise config_error(key, f"unknown key {key!r} (expected one of {sorted(CONFIG_KEYS)})")

    def pattern_list(key, default):
        value = raw.get(key, default)
        if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
            raise config_error(key, "expected a list of strings")
        for i, p in enumerate(value):
            try:
                re.compile(p)
            except re.error as e:
                raise config_error(f"{key}[{i}]", f"invalid regular expression {p!r}: {e}")
        return value

    patterns = pattern_list("patterns", DEFAULT_PATTERNS) + pattern_list("extra_patterns", [])
    action = raw.get("action", "drop")
    if action not in ("drop", "tag"):
        raise config_error("action", f"expected \"drop\" or \"tag\", got {action!r}")
    drop_missing = raw.get("drop_missing", False)
    if not isinstance(drop_missing, bool):
        raise config_error("drop_missing", "expected true or false")
    # One alternation: a single scan per user agent. An empty pattern list
    # matches nothing.
    regex = re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE) if patterns else None
    return Config(regex, action, drop_missing)


class Enrich(exports.Enrich):
    def init(self, config: str, settings: types.HostSettings) -> types.Interest:
        global CONFIG
        CONFIG = parse_config(config)
        host.log(
            types.Level.INFO,
            "bot-filter ready",
            [("action", CONFIG.action), ("drop_missing", str(CONFIG.drop_missing).lower())],
        )
        # Every event type; no properties; only the user agent.
        return types.Interest(
            event_types=[],
            properties=[],
            metadata=types.MetadataFields.USER_AGENT,
            # No id, user or session: each string sent is an allocation here.
            fields=types.EventFields(0),
        )

    def process(self, events):
        cfg = CONFIG
        changes = []
        for i, event in enumerate(events):
            ua = event.metadata.user_agent
            if not ua:
                if cfg.drop_missing:
                    changes.append(types.Change_Drop(i))
                continue
            m = cfg.regex.search(ua) if cfg.regex is not None else None
            if m is None:
                continue
            if cfg.action == "drop":
                changes.append(types.Change_Drop(i))
            else:
                changes.append(
                    types.Change_Patch(
                        types.EventPatch(
                            index=i,
                            event_type=None,
                            user_id=None,
                            session_id=None,
                            set_properties=[
                                types.Property("is_bot", types.Value_Boolean(True)),
                                types.Property("bot_match", types.Value_Str(m.group(0).lower())),
                            ],
                            remove_properties=[],
                            metadata=None,
                        )
                    )
                )
        return changes
