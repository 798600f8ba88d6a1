"""rxt-eval: fact recall and answer perplexity of an MLX RxT model.

Recall: every conversation is played turn by turn through :class:`rxt_mlx.Session` with
greedy decoding; each recall question's answer is scored with the exact-match rule of
:mod:`rxt_mlx.bench.dialogues` (whole answer equal after whitespace normalisation) and the looser
entity match. Results are broken down by how many turns back the fact was stated.

* ``memory``: the STM is carried normally (the model's own answers go into the memory).
* ``ablated``: the STM is reset to the initial STM before every question, so the decoder
  sees no memory. Chance is what guessing gives: 1 / (number of values the split can hold
  for that fact), averaged over the questions.

``--natural`` plays the natural dialogues instead (:func:`dialogues.natural_conversations`):
real names, cities, jobs, colors and foods from the data packages, free-form filler lines a
person types, two facts in one message, and questions about facts never stated, which are
scored separately (the answer must say it was not told).

Perplexity: teacher-forced over the reference answers (answer tokens and EOS), the STM
carried through the reference interactions.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx

import rxt_mlx
from rxt_mlx.bench import dialogues
from rxt_mlx.bench.cli import require_positive
from rxt_mlx.bench.dialogues import PET_KINDS, entity_match, exact_match
from rxt_mlx.session import AnswerDone, QueryTooLong, Session

DISTANCE_BINS = ("1", "2", "3", "4", "5", "6", "7+")
TARGET_BINS = DISTANCE_BINS[:6]  # the demo's target range: facts stated 1-6 turns earlier
DEMO_DIR = Path(__file__).parent.parent / "demo"


def distance_bin(distance: int) -> str:
    return str(distance) if distance < 7 else "7+"


@dataclass
class RecallTally:
    """Counts of one (distance bin, condition) cell."""

    questions: int = 0
    exact: int = 0
    entity: int = 0
    chance: float = 0.0

    def add(self, exact: bool, entity: bool, chance: float) -> None:
        self.questions += 1
        self.exact += exact
        self.entity += entity
        self.chance += chance

    def merged(self, other: RecallTally) -> RecallTally:
        return RecallTally(
            self.questions + other.questions,
            self.exact + other.exact,
            self.entity + other.entity,
            self.chance + other.chance,
        )

    def to_dict(self) -> dict[str, float]:
        n = max(self.questions, 1)
        return {
            "questions": self.questions,
            "exact": self.exact / n,
            "entity": self.entity / n,
            "chance": self.chance / n,
        }


@dataclass
class EvalResult:
    """Everything rxt-eval measures; ``to_dict`` is the ``--json`` output."""

    model: str
    split: str
    conversations: int
    recall: dict[str, dict[str, RecallTally]] = field(
        default_factory=lambda: {"memory": defaultdict(RecallTally), "ablated": defaultdict(RecallTally)}
    )
    answers_exact: int = 0
    answers: int = 0
    not_told: RecallTally = field(default_factory=RecallTally)
    by_fact: dict[str, RecallTally] = field(default_factory=lambda: defaultdict(RecallTally))
    acknowledged: dict[str, RecallTally] = field(default_factory=lambda: defaultdict(RecallTally))
    too_long: int = 0
    nll: float = 0.0
    answer_tokens: int = 0
    transcript: list[dict[str, str]] = field(default_factory=list)

    def total(self, condition: str, bins=DISTANCE_BINS) -> RecallTally:
        tally = RecallTally()
        for name in bins:
            tally = tally.merged(self.recall[condition].get(name, RecallTally()))
        return tally

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / max(self.answer_tokens, 1))

    def to_dict(self) -> dict:
        recall = {
            condition: {name: self.recall[condition][name].to_dict() for name in DISTANCE_BINS}
            | {"1-6": self.total(condition, TARGET_BINS).to_dict(), "all": self.total(condition).to_dict()}
            for condition in ("memory", "ablated")
        }
        return {
            "model": self.model,
            "split": self.split,
            "conversations": self.conversations,
            "recall": recall,
            "answers_exact": self.answers_exact / max(self.answers, 1),
            "not_told": self.not_told.to_dict(),
            "by_fact": {
                slot: {"recall_1_6": self.by_fact[slot].to_dict(), "acknowledged": self.acknowledged[slot].to_dict()}
                for slot in sorted(self.by_fact.keys() | self.acknowledged.keys())
            },
            "too_long": self.too_long,
            "answer_perplexity": self.perplexity,
            "answer_tokens": self.answer_tokens,
            "example": self.transcript,
        }

    def table(self) -> str:
        lines = [
            f"rxt-eval  model={self.model}  split={self.split}  conversations={self.conversations}",
            "",
            f"{'turns back':>10} {'questions':>9} {'exact':>7} {'entity':>7} "
            f"{'ablated':>8} {'abl.ent':>8} {'chance':>7}",
        ]
        rows = [(name, self.recall["memory"][name], self.recall["ablated"][name]) for name in DISTANCE_BINS]
        rows.append(("1-6", self.total("memory", TARGET_BINS), self.total("ablated", TARGET_BINS)))
        rows.append(("all", self.total("memory"), self.total("ablated")))
        for name, carried, ablated in rows:
            c, a = carried.to_dict(), ablated.to_dict()
            lines.append(
                f"{name:>10} {carried.questions:>9} {c['exact']:>7.1%} {c['entity']:>7.1%} "
                f"{a['exact']:>8.1%} {a['entity']:>8.1%} {c['chance']:>7.2%}"
            )
        lines.append("")
        if self.too_long:
            lines.append(f"queries longer than the model's context (answered as wrong): {self.too_long}")
        if self.not_told.questions:
            told = self.not_told.to_dict()["exact"]
            lines.append(
                f"questions about facts never stated, answered as not told: {told:.1%} of {self.not_told.questions}"
            )
        if self.by_fact:
            lines.append("by fact: exact recall 1-6 turns back / statements acknowledged exactly:")
            for slot in sorted(self.by_fact.keys() | self.acknowledged.keys()):
                recalled, acknowledged = self.by_fact[slot], self.acknowledged[slot]
                recall = f"{recalled.to_dict()['exact']:>7.1%} of {recalled.questions:<5}" if recalled.questions else ""
                acknowledgement = f"{acknowledged.to_dict()['exact']:>7.1%} of {acknowledged.questions}"
                lines.append(f"{slot:>10} {recall:<16}{acknowledgement}")
        lines += [
            f"all answers exact (memory carried): {self.answers_exact / max(self.answers, 1):.1%} of {self.answers}",
            f"answer perplexity (teacher-forced, memory carried): {self.perplexity:.3f} "
            f"over {self.answer_tokens} tokens",
        ]
        return "\n".join(lines)


def chance_of(turn, split: str, slots) -> float:
    """1 / number of values the split holds for the question's fact (0 when unknown)."""
    if slots is None or turn.slot not in slots:
        return 0.0
    pool = len(slots[turn.slot].values[split])
    if turn.slot == "pet":
        pool *= len(PET_KINDS)
    return 1.0 / pool


def greedy_answer(session, query: str, max_tokens: int) -> str:
    """Play one turn greedily (memory update included) and return the answer text."""
    text = ""
    for event in session.interact(query, max_tokens=max_tokens, temperature=0.0):
        if isinstance(event, AnswerDone):
            text = event.text
    return text


def answer_if_it_fits(session, query: str, max_tokens: int, result: EvalResult) -> str:
    """:func:`greedy_answer`, or "" (a wrong answer, counted in ``result.too_long``) for a query the
    model's context cannot take; the memory is then left as it was, as the chat leaves it."""
    try:
        return greedy_answer(session, query, max_tokens)
    except QueryTooLong:
        result.too_long += 1
        return ""


def evaluate_recall(model, tokenizer, conversations, result: EvalResult, split: str, slots, args) -> None:
    """Play every conversation with memory carried, and its questions with memory ablated."""
    initial = model.initial_stm(batch=1, seed=args.stm_seed)
    for number, conversation in enumerate(conversations):
        session = Session(model, tokenizer, stm=initial)
        for turn in conversation.turns:
            answer = answer_if_it_fits(session, turn.query, args.max_tokens, result)
            correct = exact_match(answer, turn.answer)
            result.answers += 1
            result.answers_exact += correct
            if number == 0:
                result.transcript.append({"query": turn.query, "answer": answer, "expected": turn.answer})
            if turn.kind == "not_told":
                result.not_told.add(correct, correct, 0.0)
            if turn.kind == "statement" and turn.slot:
                fact = "two facts" if "+" in turn.slot else turn.slot  # "name+city": both in one message
                result.acknowledged[fact].add(correct, entity_match(answer, turn.values), 0.0)
            if turn.kind != "question" or turn.distance is None:
                continue
            chance = chance_of(turn, split, slots)
            name = distance_bin(turn.distance)
            result.recall["memory"][name].add(correct, entity_match(answer, turn.values), chance)
            if name in TARGET_BINS:
                result.by_fact[turn.slot or "?"].add(correct, entity_match(answer, turn.values), chance)
            ablated = answer_if_it_fits(Session(model, tokenizer, stm=initial), turn.query, args.max_tokens, result)
            result.recall["ablated"][name].add(
                exact_match(ablated, turn.answer), entity_match(ablated, turn.values), chance
            )


def evaluate_perplexity(model, tokenizer, conversations, result: EvalResult, stm_seed: int, batch: int = 32) -> None:
    """Teacher-forced NLL of the reference answers, STM carried through reference interactions."""
    for start in range(0, len(conversations), batch):
        group = conversations[start : start + batch]
        stm = mx.repeat(model.initial_stm(batch=1, seed=stm_seed), len(group), axis=1)
        for index in range(max(len(c.turns) for c in group)):
            rows, answer_starts = [], []
            for conversation in group:
                if index < len(conversation.turns):
                    turn = conversation.turns[index]
                    prompt = tokenizer.query_ids(turn.query)
                    rows.append(tokenizer.interaction_ids(turn.query, turn.answer))
                    answer_starts.append(len(prompt))
                else:
                    # a conversation already over: one visible PAD token, no answer, STM kept
                    rows.append([tokenizer.config.pad_token_id])
                    answer_starts.append(1)
            active = mx.array([index < len(c.turns) for c in group])[None, :, None, None]
            length = max(len(row) for row in rows)
            ids = mx.array([row + [0] * (length - len(row)) for row in rows], dtype=mx.int32)
            mask = mx.array([[i < len(row) for i in range(length)] for row in rows])
            logits = model.decoder(ids, stm).astype(mx.float32)
            log_probs = logits[:, :-1] - mx.logsumexp(logits[:, :-1], axis=-1, keepdims=True)
            picked = mx.take_along_axis(log_probs, ids[:, 1:, None], axis=-1)[..., 0]
            positions = mx.arange(length - 1)[None]
            starts = mx.array(answer_starts)[:, None]
            ends = mx.array([len(row) - 1 for row in rows])[:, None]
            answer_mask = (positions >= starts - 1) & (positions < ends)
            result.nll -= (picked * answer_mask).sum().item()
            result.answer_tokens += int(answer_mask.sum().item())
            new_stm = model.update_memory(stm, ids, mask)
            stm = mx.where(active, new_stm, stm)
            mx.eval(stm)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="rxt-eval",
        description="Memory recall (by turns since the fact was stated, with and without memory) and answer "
        "perplexity of an RxT model on recall dialogues.",
    )
    parser.add_argument(
        "--model", type=Path, default=DEMO_DIR, help="MLX model folder or Hub repo id org/name (default: the demo)"
    )
    parser.add_argument("--split", choices=("heldout", "train"), default="heldout")
    parser.add_argument("--conversations", type=int, default=200, help="number of conversations (default 200)")
    parser.add_argument("--seed", type=int, default=1234, help="data seed (the demo was trained on train seeds)")
    parser.add_argument("--data", type=Path, help="evaluate these JSONL conversations instead of synthetic ones")
    parser.add_argument(
        "--natural",
        action="store_true",
        help="natural dialogues: real values from the data packages, free-form filler, facts never stated",
    )
    parser.add_argument("--stm-seed", type=int, default=0, help="seed of the initial STM (Session default: 0)")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    require_positive(parser, args, ("conversations", "max_tokens"))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.data:
        conversations = dialogues.load_jsonl(args.data)[: args.conversations]
        slots = None
    elif args.natural:
        conversations = dialogues.natural_conversations(args.conversations, args.split, args.seed)
        slots = dialogues.natural_slots()
    else:
        conversations = dialogues.generate_conversations(args.conversations, args.split, args.seed)
        slots = dialogues.build_slots()
    model, tokenizer = rxt_mlx.load(args.model)
    split = "jsonl" if args.data else args.split + (" natural" if args.natural else "")
    result = EvalResult(str(args.model), split, len(conversations))
    evaluate_recall(model, tokenizer, conversations, result, args.split, slots, args)
    evaluate_perplexity(model, tokenizer, conversations, result, args.stm_seed)
    print(result.table())
    if args.json:
        args.json.write_text(json.dumps(result.to_dict(), indent=2))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
