"""Export a conversation as a Markdown document."""

from __future__ import annotations

import re
from pathlib import Path

from rxt_app.storage import Conversation, Message


def conversation_markdown(conversation: Conversation, messages: list[Message]) -> str:
    """The transcript as Markdown: a title, provenance, then one section per turn with its figures."""
    lines = [f"# {conversation.title}", ""]
    lines.append(f"- created: {conversation.created_at}")
    lines.append(f"- model fingerprint: `{conversation.model_fingerprint}`")
    if conversation.forked_from:
        lines.append(f"- forked from `{conversation.forked_from}` at turn {conversation.forked_at_turn}")
    lines.append("")
    for message in messages:
        if message.role == "user":
            lines += [f"## Turn {message.turn}", "", "**You:**", "", message.text, ""]
            continue
        lines += ["**RxT:**", "", message.text, ""]
        if message.stats is not None:
            stats = message.stats
            stopped = ", stopped" if stats.stopped else ""
            lines += [
                f"<sub>{stats.tokens} tokens, TTFT {stats.ttft_seconds * 1000:.0f} ms, "
                f"{stats.tokens_per_second:.1f} tok/s, memory update {stats.memory_update_seconds * 1000:.0f} ms"
                f"{stopped}</sub>",
                "",
            ]
    return "\n".join(lines)


def default_export_path(folder: Path, conversation: Conversation) -> Path:
    """``folder/<title-slug>-<id prefix>.md``."""
    slug = re.sub(r"[^a-z0-9]+", "-", conversation.title.lower()).strip("-")[:40] or "conversation"
    return folder / f"{slug}-{conversation.id[:8]}.md"
