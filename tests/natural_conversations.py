"""Hand-written natural conversations with the demo (not from the generator), for tests/test_demo.py.

Each turn is (message, expected answer): a recall answer that must come back exactly, ``None``
for an off-topic line that must get one of the generic replies, or ``"ack"`` for a statement
(its acknowledgement is not checked). The values are real words held out of the demo's
training (checked in the test), the filler lines are written here, in no training list.
"""

from rxt_mlx.bench.free_chat import GREETING_REPLY, NOT_TOLD, QUESTION_REPLY, REMARK_REPLY

GENERIC = {GREETING_REPLY, QUESTION_REPLY, REMARK_REPLY}

VALUES = {
    "name": ["Stig", "Letitia", "Carey"],
    "city": ["Karlsruhe", "Coventry", "Accra"],
    "pet": ["Viggo", "Sigmund"],
    "job": ["pharmacologist", "lobbyist"],
    "color": ["powder blue", "dark red"],
    "food": ["miso", "fennel"],
    "number": ["671"],
}

NATURAL_CONVERSATIONS = [
    [
        ("hello there, what's up?", None),
        ("I'm from Karlsruhe and my name is Stig.", "ack"),
        ("ugh, work was so busy today", None),
        ("do you know any good movies?", None),
        ("I have a cat named Viggo.", "ack"),
        ("lol", None),
        ("What is my name?", "Your name is Stig."),
        ("Where do I live?", "You live in Karlsruhe."),
        ("What pet do I have?", "Your pet is a cat named Viggo."),
    ],
    [
        ("Hi! I work as a pharmacologist.", "ack"),
        ("The weather has been terrible all week.", None),
        ("My favourite color is powder blue.", "ack"),
        ("what's the tallest mountain in the world?", None),
        ("I could eat miso every day.", "ack"),
        ("haha ok", None),
        ("What do I do for work?", "You work as a pharmacologist."),
        ("What's my favourite colour?", "Your favourite color is powder blue."),
        ("What food do I love?", "Your favourite food is miso."),
    ],
    [
        ("What is my name?", NOT_TOLD["name"]),
        ("Oh, right. I'm Letitia.", "ack"),
        ("I just made some tea.", None),
        ("What is my name?", "Your name is Letitia."),
        ("Do you know where I live?", NOT_TOLD["city"]),
    ],
    [
        ("My lucky number is 671.", "ack"),
        ("good morning!", None),
        ("I slept badly last night.", None),
        ("Who wrote Hamlet?", None),
        ("my coffee is cold", None),
        ("how far away is the sun?", None),
        ("nice", None),
        ("I'm going shopping later.", None),
        ("Can you sing?", None),
        ("it is snowing outside", None),
        ("what is the meaning of life?", None),
        ("I watched a great film yesterday.", None),
        ("ok cool", None),
        ("My sister is visiting next week.", None),
        ("Why do cats purr?", None),
        ("What is my lucky number?", "Your lucky number is 671."),
    ],
    [
        ("Hey, I'm Carey.", "ack"),
        ("I live in Coventry.", "ack"),
        ("We have a dog, Sigmund.", "ack"),
        ("My favorite food is fennel.", "ack"),
        ("what do you think about football?", None),
        ("Which city do I live in?", "You live in Coventry."),
        ("What is my favourite food?", "Your favourite food is fennel."),
        ("Who am I?", "Your name is Carey."),
        ("What's my pet called?", "Your pet is a dog named Sigmund."),
    ],
]
