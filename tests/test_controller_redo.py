"""ChatController's redo after rewind when the conversation changes meanwhile, here or in another
process: refused with the reason, the rewound turns' files removed, the memory at the stored turn."""

from __future__ import annotations

import pytest
from rxt_app.controller import ActionRefused
from rxt_app.storage import Storage

from tests.test_controller import Chat


def rewound_twice(tmp_path):
    """Three turns answered, then two rewinds kept for redo; returns the Chat and the conversation."""
    chat = Chat(tmp_path)
    conversation = chat.ready_conversation()
    chat.answered(conversation.id, ["one", "two", "three"])
    chat.controller.rewind(conversation.id, keep_for_redo=True)
    chat.controller.rewind(conversation.id, keep_for_redo=True)
    chat.settle()
    return chat, conversation


def test_redo_is_refused_after_a_change_elsewhere_and_its_files_are_removed(tmp_path):
    chat, conversation = rewound_twice(tmp_path)
    assert chat.controller.redo_turns(conversation.id) == 2
    kept = [snapshot for _, turn, _, snapshot in chat.worker.sent if turn > 1]
    assert all(path.is_file() for path in kept)

    other = Storage(tmp_path)  # another process rewinds to turn 0
    other.rewind_to(conversation.id, 0)
    other.close()
    with pytest.raises(ActionRefused, match=r"Cannot redo: the conversation changed since the rewind"):
        chat.controller.redo(conversation.id)
    chat.settle()
    assert chat.storage.conversation(conversation.id).turn_count == 0
    assert not any(path.exists() for path in kept)
    assert chat.worker.opened[-1] == (conversation.id, 0)
    assert chat.controller.redo_turns(conversation.id) == 0
    with pytest.raises(ActionRefused, match="Nothing to redo"):
        chat.controller.redo(conversation.id)


def test_a_redo_brings_back_turns_of_two_rewinds_in_order(tmp_path):
    chat, conversation = rewound_twice(tmp_path)
    assert chat.controller.redo(conversation.id).turn_count == 3
    assert [text for _, role, text in chat.transcript(conversation.id) if role == "user"] == ["one", "two", "three"]
    assert chat.worker.opened[-1] == (conversation.id, 3)
