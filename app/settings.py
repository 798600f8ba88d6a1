"""The chat's settings (the theme), kept as JSON beside the conversations in the data dir."""

from __future__ import annotations

import json
from pathlib import Path

SETTINGS_NAME = "settings.json"


class Settings:
    """Settings in ``data_dir/settings.json``; a missing or unreadable file gives no settings.

    Args:
        data_dir: the chat's data dir.
    """

    def __init__(self, data_dir: Path):
        self.path = Path(data_dir) / SETTINGS_NAME

    def load(self) -> dict:
        """The saved settings ({} when there are none or the file cannot be read)."""
        try:
            values = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return values if isinstance(values, dict) else {}

    def save(self, key: str, value: object) -> None:
        """Remember ``value`` under ``key`` (written atomically; a failure to write is not fatal)."""
        values = self.load()
        if values.get(key) == value:
            return
        values[key] = value
        temporary = self.path.with_suffix(".tmp")
        try:
            temporary.write_text(json.dumps(values, indent=2))
            temporary.replace(self.path)
        except OSError:
            return
