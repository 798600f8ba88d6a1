"""The inference worker of rxt-serve: the chat's worker plus what an HTTP request asks of a turn.

:class:`ServingWorker` is an :class:`~rxt_app.worker.InferenceWorker` (the same thread, job queue
and events, so a :class:`~rxt_app.controller.ChatController` drives it unchanged) that adds:

* a plan per turn, set with :meth:`ServingWorker.plan_turn` just before the controller sends the
  turn: :class:`Generate` (the request's sampling options and stop strings) or :class:`Absorb`
  (a turn the client already has, query and answer, written into the memory by one memory
  update without decoding: the history an OpenAI client resends);
* a system prompt in a conversation's initial memory (``system_prompt_of``, asked when a
  conversation is loaded at turn 0);
* stopping one conversation's turn (:meth:`ServingWorker.stop_turn`, a client that went away)
  instead of whichever answer is being generated;
* :class:`AnswerEnded` before ``AnswerFinished``: why the answer ended and the prompt's size.

A turn whose answer met a stop string memorises the answer the client got: the text before the
stop string.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rxt_app.stop_strings import StopStrings
from rxt_app.storage import TurnStats
from rxt_app.worker import (
    AnswerFinished,
    InferenceWorker,
    SessionReady,
    TokenText,
    TurnSaved,
    TurnStarted,
    _Open,
    _Send,
    memory_change,
)

from rxt_mlx.sampling import SamplingOptions


@dataclass(frozen=True)
class Generate:
    """Answer the query with ``options``; the answer ends before the first of ``stop``."""

    options: SamplingOptions
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Absorb:
    """The turn's answer is ``answer`` (the client's): write it into the memory, decode nothing."""

    answer: str


TurnPlan = Generate | Absorb


@dataclass(frozen=True)
class AnswerEnded:
    """Why an answer ended (``stop``: EOS or a stop string; ``length``: the token budget;
    ``cancelled``: :meth:`ServingWorker.stop_turn`) and how many tokens its prompt had."""

    conversation_id: str
    turn: int
    finish_reason: str
    prompt_tokens: int


@dataclass(frozen=True)
class _PlannedSend(_Send):
    plan: TurnPlan | None = None


@dataclass(frozen=True)
class _OpenWithSystemPrompt(_Open):
    system_prompt: str | None = None


class ServingWorker(InferenceWorker):
    """The one inference thread of rxt-serve (see the module docstring).

    Args:
        model_dir, post, sampling: as :class:`~rxt_app.worker.InferenceWorker` (``sampling``: the
            options of a turn sent without a plan).
        system_prompt_of: the system prompt of a conversation (None: none); called on the thread
            that calls :meth:`open` (the controller's).
    """

    def __init__(
        self,
        model_dir: str | Path,
        post: Callable[[Any], Any],
        sampling: dict | None = None,
        system_prompt_of: Callable[[str], str | None] = lambda conversation_id: None,
    ):
        super().__init__(model_dir, post, sampling)
        self.system_prompt_of = system_prompt_of
        self._plans: dict[str, TurnPlan] = {}
        self._stop_requests: set[tuple[str, int]] = set()

    def plan_turn(self, conversation_id: str, plan: TurnPlan) -> None:
        """How the next turn sent for ``conversation_id`` runs (call just before the controller sends it)."""
        self._plans[conversation_id] = plan

    def forget_plan(self, conversation_id: str) -> None:
        """Drop a plan that no turn took (the controller refused the send)."""
        self._plans.pop(conversation_id, None)

    def send(self, conversation_id: str, turn: int, query: str, snapshot: Path) -> None:
        self._jobs.put(_PlannedSend(conversation_id, turn, query, snapshot, self._plans.pop(conversation_id, None)))

    def open(self, conversation_id: str, turn: int, snapshots: list[Path]) -> None:
        system_prompt = self.system_prompt_of(conversation_id) if turn == 0 else None
        self._jobs.put(_OpenWithSystemPrompt(conversation_id, turn, tuple(snapshots), system_prompt))

    def stop_turn(self, conversation_id: str, turn: int) -> None:
        """Stop ``turn`` of a conversation (thread-safe); its partial answer is kept and memorised."""
        with self._lock:
            self._stop_requests.add((conversation_id, turn))

    # ----- on the inference thread

    def _open(self, job: _Open) -> None:
        system_prompt = getattr(job, "system_prompt", None)
        if not system_prompt:
            super()._open(job)
            return
        from rxt_mlx.session import Session

        self._sessions.pop(job.conversation_id, None)
        self._sessions[job.conversation_id] = Session(self.model, self.tokenizer, system_prompt=system_prompt)
        self._post(SessionReady(job.conversation_id, job.turn))

    def _send(self, job: _Send) -> None:
        plan = getattr(job, "plan", None)
        if plan is None:
            plan = Generate(SamplingOptions.of(None, **self.sampling))
        if isinstance(plan, Absorb):
            self._absorb(job, plan)
        else:
            self._generate(job, plan)

    def _open_session(self, job: _Send):
        session = self._sessions.get(job.conversation_id)
        if session is None:
            raise RuntimeError(f"conversation {job.conversation_id} is not open (its memory could not be loaded)")
        return session

    def _stop_requested(self, job: _Send) -> bool:
        with self._lock:
            return (job.conversation_id, job.turn) in self._stop_requests

    def _generate(self, job: _Send, plan: Generate) -> None:
        from rxt_mlx.session import AnswerDone

        session = self._open_session(job)
        previous_stm, previous_turn = session.stm, session.turn
        self._post(TurnStarted(job.conversation_id, job.turn))
        stops = StopStrings(plan.stop)
        last_token, answer = None, None
        with self._lock:
            self._active_session = session
            self._stop_requests = {(c, t) for c, t in self._stop_requests if c != job.conversation_id or t >= job.turn}
        try:
            for event in session.generate(job.query, plan.options):
                if isinstance(event, AnswerDone):
                    answer = event
                    break
                last_token = event.id
                self._post_text(job, stops.add(event.text))
                if stops.hit or self._stop_requested(job):
                    session.stop()
        finally:
            with self._lock:
                self._active_session = None
        if stops.hit:
            text = stops.visible
        else:
            self._post_text(job, stops.finish())
            text = answer.text
            if text.startswith(stops.text):  # after a stop, a held-back last character is in the answer only
                self._post_text(job, text[len(stops.text) :])
        reason = "stop" if stops.hit or last_token == self.tokenizer.eos_id else "length"
        if self._stop_requested(job) and not stops.hit:
            reason = "cancelled"
        prompt_tokens = len(self.tokenizer.query_ids(job.query))
        self._post(AnswerEnded(job.conversation_id, job.turn, reason, prompt_tokens))
        self._post(
            AnswerFinished(
                job.conversation_id,
                job.turn,
                text,
                answer.tokens,
                answer.prompt_seconds,
                answer.ttft_seconds,
                answer.decode_tokens_per_second,
                answer.stopped and not stops.hit,
            )
        )
        if stops.hit:  # memorise what the client got, not the tokens decoded past the stop string
            seconds = self._write_turn(job, previous_stm, previous_turn, text)
        else:
            seconds = session.update_memory().seconds
        stats = TurnStats(
            tokens=answer.tokens,
            prompt_seconds=answer.prompt_seconds,
            ttft_seconds=answer.ttft_seconds,
            tokens_per_second=answer.decode_tokens_per_second,
            memory_update_seconds=seconds,
            stopped=answer.stopped and not stops.hit,
        )
        self._save(job, previous_stm, text, stats)

    def _post_text(self, job: _Send, text: str) -> None:
        if text:
            self._post(TokenText(job.conversation_id, job.turn, text))

    def _absorb(self, job: _Send, plan: Absorb) -> None:
        session = self._open_session(job)
        previous_stm = session.stm
        self._post(TurnStarted(job.conversation_id, job.turn))
        self._post(AnswerFinished(job.conversation_id, job.turn, plan.answer, 0, 0.0, 0.0, 0.0, False))
        seconds = self._write_turn(job, previous_stm, session.turn, plan.answer)
        self._save(job, previous_stm, plan.answer, TurnStats(0, 0.0, 0.0, 0.0, seconds))

    def _write_turn(self, job: _Send, stm, turn: int, answer: str) -> float:
        """Make the conversation's session the memory ``stm`` (after ``turn`` turns) updated with
        ``job.query`` and ``answer``; returns the update's seconds."""
        import mlx.core as mx

        from rxt_mlx.session import Session

        started = time.perf_counter()
        ids = self.tokenizer.interaction_ids(job.query, answer)
        limit = self.model.config.encoder.seq_len
        if len(ids) > limit:  # a stop-string cut answer re-tokenized, one EOS longer than what was decoded
            ids = [*ids[: limit - 1], self.tokenizer.eos_id]
        stm = self.model.update_memory(stm, mx.array([ids], dtype=mx.uint32))
        self._sessions[job.conversation_id] = Session(self.model, self.tokenizer, stm=stm, turn=turn + 1)
        return time.perf_counter() - started

    def _save(self, job: _Send, previous_stm, answer: str, stats: TurnStats) -> None:
        """Save the conversation's memory after the turn to the job's snapshot; post TurnSaved."""
        from dataclasses import replace

        from rxt_mlx.stm import save_stm

        stm = self._sessions[job.conversation_id].stm
        stats = replace(stats, memory_change=tuple(memory_change(previous_stm, stm)))
        save_stm(job.snapshot, stm, model_fingerprint=self.fingerprint, turn=job.turn)
        self._post(TurnSaved(job.conversation_id, job.turn, job.query, answer, stats, job.snapshot))
