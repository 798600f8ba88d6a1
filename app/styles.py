"""The chat's Textual CSS (kept in Python so it ships inside the wheel without package-data rules)."""

CHAT_CSS = """
#body { height: 1fr; }
#sidebar { width: 25%; max-width: 30; min-width: 14; border-right: solid $primary-darken-2; }
#sidebar .heading { text-style: bold; padding: 0 1; color: $accent; }
#conversations { height: 1fr; }
ConversationItem { padding: 0 1; }
ConversationItem .turns { color: $text-muted; }
ConversationItem.foreign .title { color: $warning; }
#main { width: 1fr; }
#notice { background: $warning 25%; color: $text; padding: 0 1; display: none; }
#transcript { height: 1fr; padding: 0 1; }
.message { height: auto; margin: 0 0 1 0; }
.elided { color: $text-muted; margin-bottom: 1; }
.message .role { text-style: bold; }
.message.chosen { background: $boost; }
.message.user .role { color: $accent; }
.message.assistant .role { color: $success; }
.message.waiting { color: $text-muted; }
.message .text { margin: 0; padding: 0 0 0 2; }
#prompt { dock: bottom; border-subtitle-color: $text-muted; }
#prompt.over { border: tall $error; border-subtitle-color: $error; border-subtitle-style: bold; }
#welcome { height: auto; }
#welcome .about { margin-bottom: 1; }
#welcome .heading { text-style: bold; }
#welcome .example { color: $accent; padding-left: 2; }
#welcome .example:hover { background: $boost; }
.dialog.search { width: 100; }
.dialog .option { height: 1; margin-top: 1; }
.dialog .option Label { width: 30; }
.dialog .option Input { width: 1fr; }
.dialog.search #results { height: auto; max-height: 16; }
#memory { width: 34; height: 1fr; border-left: solid $primary-darken-2; padding: 0 1; }
#status { height: auto; background: $primary-darken-2; color: $text; padding: 0 1; }
.dialog-screen { align: center middle; }
.dialog { width: 70; max-width: 95%; height: auto; border: thick $primary; background: $surface; padding: 1 2; }
.dialog .buttons { height: auto; margin-top: 1; }
.dialog .buttons Button { margin-right: 2; }
.dialog #error { color: $error; }
.dialog.help { width: 100; max-width: 95%; }
.dialog .heading { text-style: bold; margin-bottom: 1; }
.dialog Label { width: 100%; }
"""
