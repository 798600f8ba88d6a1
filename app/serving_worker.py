"""The inference worker of rxt-serve: the chat's worker plus what an HTTP request asks of a turn.

:class:`ServingWorker` is an :class:`~rxt_app.worker.InferenceWorker` (the same thread, job queue
and events, so a :class:`~rxt_app.controller.ChatController` drives it unchanged) that adds:

* a plan per turn, set with :meth:`ServingWorker.plan_turn` just before the controller sends the
  turn: :class:`Generate` (the request's sampling options and stop strings) or :class:`Absorb`
  (a turn the client already has, query and answer, written into the memory by one memory
  update without decoding: the history an OpenAI client resends);
* stopping one conversation's turn (:meth:`ServingWorker.stop_turn`, a client that went away)
  instead of whichever answer is being generated;
* :class:`AnswerEnded` before ``AnswerFinished``: why the answer ended and the prompt's size;
* greedy answers of different conversations decoded together, as the rows of one batch
  (:class:`rxt_mlx.batch.DecodeBatch`): the turns queued behind the first one, and those that
  arrive while it decodes, join between two steps (up to ``max_batch``; those joining together are
  prefilled in one call); a row leaves when its answer ends, and the memory updates of rows that
  end within a few steps of each other run as one batch (:func:`rxt_mlx.batch.update_memories`)
  on a stream of their own. Sampled answers are decoded alone by their Session (a seed then gives
  the answer it gives alone). Jobs of other conversations run between two steps (taken with
  :meth:`~rxt_app.worker.InferenceWorker.take_job`); a job of a conversation in the batch waits
  for its row, so one conversation's turns keep their order;
* snapshots written by :class:`~rxt_app.snapshot_writer.SnapshotWriter` threads (those of
  different conversations at once): the inference thread goes on decoding while a turn's file is
  written and fsynced, and TurnSaved is posted once it is on disk.

The system prompt of a conversation's turn-0 memory is the worker's ``system_prompt_of``.

A turn whose answer met a stop string memorises the answer the client got: the text before the
stop string.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from traceback import format_exc
from typing import Any

from rxt_app.answer_rows import AnswerRow, DecodedAnswer, finish_reason
from rxt_app.snapshot_writer import SnapshotWriter
from rxt_app.stop_strings import StopStrings
from rxt_app.storage import TurnStats
from rxt_app.worker import (
    AnswerFinished,
    InferenceWorker,
    JobFailed,
    TokenText,
    TurnJob,
    TurnSaved,
    TurnStarted,
    memory_change,
)

from rxt_mlx.sampling import SamplingOptions
from rxt_mlx.session import answer_budget

UPDATE_GATHER_STEPS = 2
"""Decoder steps a finished row's memory update waits for other rows to finish, so that their
updates run as one batch (at once when no row is left)."""
UPDATE_LAG_STEPS = 3
"""Decoder steps of the other rows between the start of memory updates and the saving of their
results; they run on their own stream meanwhile (and are waited for if not done by then)."""


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


class ServingWorker(InferenceWorker):
    """The one inference thread of rxt-serve (see the module docstring).

    Args:
        model_dir, post, sampling: as :class:`~rxt_app.worker.InferenceWorker` (``sampling``: the
            options of a turn sent without a plan).
        system_prompt_of: the system prompt of a conversation (None: none); called on the thread
            that calls :meth:`open` (the controller's).
        max_batch: most answers decoded together (1: one at a time).
    """

    def __init__(
        self,
        model_dir: str | Path,
        post: Callable[[Any], Any],
        sampling: dict | None = None,
        system_prompt_of: Callable[[str], str | None] = lambda conversation_id: None,
        max_batch: int = 8,
    ):
        super().__init__(model_dir, post, sampling)
        self.system_prompt_of = system_prompt_of
        self.max_batch = max_batch
        self._plans: dict[str, TurnPlan] = {}
        self._turn_plans: dict[tuple[str, int], TurnPlan] = {}
        self._stop_lock = threading.Lock()
        self._stop_requests: set[tuple[str, int]] = set()
        self._decoding: set[tuple[str, int]] = set()
        self._update_stream = None
        self._batch = None
        self._snapshots = SnapshotWriter()

    def plan_turn(self, conversation_id: str, plan: TurnPlan) -> None:
        """How the next turn sent for ``conversation_id`` runs (call just before the controller sends it)."""
        self._plans[conversation_id] = plan

    def forget_plan(self, conversation_id: str) -> None:
        """Drop a plan that no turn took (the controller refused the send)."""
        self._plans.pop(conversation_id, None)

    def send(self, conversation_id: str, turn: int, query: str, snapshot: Path) -> None:
        plan = self._plans.pop(conversation_id, None)
        if plan is not None:
            self._turn_plans[(conversation_id, turn)] = plan
        super().send(conversation_id, turn, query, snapshot)

    def stop_turn(self, conversation_id: str, turn: int) -> None:
        """Stop ``turn`` of a conversation (thread-safe); its partial answer is kept and memorised."""
        with self._stop_lock:
            self._stop_requests.add((conversation_id, turn))

    def stop(self) -> None:
        """Stop every answer being generated (alone or together); they are kept and memorised."""
        super().stop()
        with self._stop_lock:
            self._stop_requests |= self._decoding

    def wait_idle(self) -> None:
        """Block until every queued job is done and its snapshot written."""
        super().wait_idle()
        self._snapshots.wait()

    def shutdown(self, timeout: float | None = 30.0) -> None:
        """Finish the queued jobs and the snapshot writes, then end both threads."""
        super().shutdown(timeout)
        self._snapshots.close(timeout)

    # ----- on the inference thread

    def _send(self, job: TurnJob) -> None:
        plan = self._plan(job)
        if isinstance(plan, Absorb):
            self._absorb(job, plan)
        elif self.max_batch > 1 and batchable(plan):
            self._decode_together(job)
        else:
            self._decode_alone(job, plan)

    def _plan(self, job: TurnJob) -> TurnPlan:
        plan = self._turn_plans.get((job.conversation_id, job.turn))
        return plan if plan is not None else Generate(SamplingOptions.of(None, **self.sampling))

    def _open_session(self, job: TurnJob):
        session = self.loaded_session(job.conversation_id)
        if session is None:
            raise RuntimeError(f"conversation {job.conversation_id} is not open (its memory could not be loaded)")
        return session

    def _stop_requested(self, job: TurnJob) -> bool:
        with self._stop_lock:
            return (job.conversation_id, job.turn) in self._stop_requests

    def _starting(self, job: TurnJob) -> None:
        """Forget the turn's plan (read by now) and stop requests of this conversation's earlier
        turns; post TurnStarted."""
        self._turn_plans.pop((job.conversation_id, job.turn), None)
        with self._stop_lock:
            self._stop_requests = {(c, t) for c, t in self._stop_requests if c != job.conversation_id or t >= job.turn}
        self.post(TurnStarted(job.conversation_id, job.turn))

    def _failed(self, job: TurnJob, error: BaseException, details: str) -> None:
        """Report ``job``'s turn as failed with ``error`` (``details``: its traceback)."""
        self._turn_plans.pop((job.conversation_id, job.turn), None)
        self.post(JobFailed(job.conversation_id, job.turn, f"{type(error).__name__}: {error}", details))

    def _post_text(self, job: TurnJob, text: str) -> None:
        if text:
            self.post(TokenText(job.conversation_id, job.turn, text))

    # ----- one answer alone (sampled answers: Session's own loop and random stream)

    def _decode_alone(self, job: TurnJob, plan: Generate) -> None:
        from rxt_mlx.session import AnswerDone

        session = self._open_session(job)
        previous_stm, previous_turn = session.stm, session.turn
        self._starting(job)
        stops = StopStrings(plan.stop)
        ids: list[int] = []
        with self.answering(session):
            for event in session.generate(job.query, plan.options):
                if isinstance(event, AnswerDone):
                    done = event
                    break
                ids.append(event.id)
                self._post_text(job, stops.add(event.text))
                if stops.hit or self._stop_requested(job):
                    session.stop()
        text = stops.visible if stops.hit else done.text
        if not stops.hit:
            self._post_text(job, stops.finish())
            if text.startswith(stops.text):  # after a stop, a held-back last character is in the answer only
                self._post_text(job, text[len(stops.text) :])
        stopped = done.stopped and not stops.hit
        eos = self.tokenizer.eos_id
        answer = DecodedAnswer(
            ids,
            text,
            finish_reason(stops.hit, ids[-1] if ids else None, eos, stopped),
            stopped,
            stops.hit,
            done.prompt_seconds,
            done.ttft_seconds,
            done.decode_tokens_per_second,
        )
        self._complete_update(self._finish(job, previous_stm, previous_turn, answer))

    # ----- answers decoded together (greedy answers of different conversations)

    def _decode_together(self, first: TurnJob) -> None:
        """Decode ``first`` and the turns queued behind it (and arriving meanwhile) as rows of one
        batch; the memories of rows that end are updated together and saved.

        Each step is computed while the tokens of the step before are shown (as Session does).
        Jobs of conversations not in the batch that cannot join it (loads, written turns, sampled
        answers) run between two steps; a job of a conversation in the batch waits for its row.
        """
        import mlx.core as mx

        from rxt_mlx.batch import DecodeBatch

        if self._batch is None:  # kept across batches: its compiled step is traced once per shape
            vocab = min(self.model.config.decoder.vocab_size, self.tokenizer.vocab_size)
            self._batch = DecodeBatch(self.model.decoder, vocab)
        together = _Together(self._batch)
        taken = 0
        try:
            joining = [first, *self._take_queued(together, 1)]
            taken += len(joining) - 1
            self._join(together, joining)
            while together.rows:
                tokens = together.tokens
                together.tokens = greedy(together.batch.step(tokens))
                mx.async_eval(together.tokens)
                for index, token in reversed(list(enumerate(tokens.tolist()))):
                    if together.rows[index][2].accept(token):
                        self._leave(together, index)
                self._start_updates(together, UPDATE_GATHER_STEPS)
                self._complete_updates(together, UPDATE_LAG_STEPS)
                joining = self._take_queued(together, len(together.rows))
                taken += len(joining)
                self._join(together, joining)
        except Exception as error:  # noqa: BLE001 - each row still in the batch is reported as failed
            self._batch = None
            for job, _, _ in together.rows:
                self._failed(job, error, format_exc())
        finally:
            self._start_updates(together, -1)
            self._complete_updates(together, -1)
            with self._stop_lock:
                self._decoding.clear()
            for _ in range(taken + together.ran):
                self.job_done()

    def _start_updates(self, together: _Together, gather: int) -> None:
        """Start the memory updates of the rows that ended, as one batch, once the first of them
        has waited more than ``gather`` steps or no row is left."""
        for update in together.ended:
            update.steps += 1
        if not together.ended or (together.rows and together.ended[0].steps <= gather):
            return
        updates, together.ended = together.ended, []
        try:
            self._start_update(updates)
        except Exception as error:  # noqa: BLE001 - these turns fail, the batch goes on
            for update in updates:
                job = update.job
                self._failed(job, error, format_exc())
            return
        together.updating.extend(updates)

    def _complete_updates(self, together: _Together, lag: int) -> None:
        """Save the memory updates started more than ``lag`` steps ago (each waits for its STM)."""
        for update in list(together.updating):
            update.steps += 1
            if update.steps > lag:
                together.updating.remove(update)
                self._run_between(update.job, lambda update=update: self._complete_update(update))

    def _join(self, together: _Together, jobs: list[TurnJob]) -> None:
        """Prefill the answers of ``jobs`` together and add them as the batch's last rows (a job
        that cannot start is reported failed); their first tokens are shown after the next step
        is launched."""
        import mlx.core as mx

        rows = []
        for job in jobs:
            try:
                rows.append((job, *self._answer_row(job)))
            except Exception as error:  # noqa: BLE001 - this turn fails, the batch goes on
                self._failed(job, error, format_exc())
        if not rows:
            return
        try:
            prompts = [row.prompt for _, _, row in rows]
            first = greedy(together.batch.add_rows(prompts, [session.memory for _, session, _ in rows]))
        except Exception as error:  # noqa: BLE001 - these turns fail, the batch goes on
            for job, _, _ in rows:
                self._failed(job, error, format_exc())
            return
        together.rows.extend(rows)
        together.tokens = first if together.tokens is None else mx.concatenate([together.tokens, first])
        with self._stop_lock:
            self._decoding.update((job.conversation_id, job.turn) for job, _, _ in rows)

    def _answer_row(self, job: TurnJob) -> tuple[Any, AnswerRow]:
        """The Session of ``job``'s conversation and the row of its answer; posts TurnStarted."""
        session = self._open_session(job)
        plan = self._plan(job)
        prompt = self.tokenizer.query_ids(job.query)
        budget = answer_budget(self.model.config.decoder.seq_len, len(prompt), plan.options.max_tokens)
        self._starting(job)
        row = AnswerRow(
            prompt,
            budget,
            self.tokenizer.eos_id,
            StopStrings(plan.stop),
            self.tokenizer.streaming_detokenizer(),
            self.tokenizer.decode,
            lambda text: self._post_text(job, text),
            lambda: self._stop_requested(job),
        )
        return session, row

    def _leave(self, together: _Together, index: int) -> None:
        """Row ``index``'s answer ended: out of the batch; its memory update waits to start."""
        import mlx.core as mx

        job, session, row = together.rows.pop(index)
        together.batch.remove(index)
        kept = [position for position in range(len(together.rows) + 1) if position != index]
        together.tokens = together.tokens[mx.array(kept)] if kept else None
        with self._stop_lock:
            self._decoding.discard((job.conversation_id, job.turn))
        self._run_between(
            job, lambda: together.ended.append(self._finish(job, session.stm, session.turn, row.result()))
        )

    def _take_queued(self, together: _Together, rows: int) -> list[TurnJob]:
        """Take the jobs at the head of the queue that need not wait for a row of the batch, up to
        ``max_batch`` rows with ``rows`` rows in it: the answers that join it (returned, in order),
        and the other jobs, which run now."""
        joining: list[TurnJob] = []
        while rows + len(joining) < self.max_batch:
            busy = {job.conversation_id for job, _, _ in together.rows}
            busy |= {update.job.conversation_id for update in together.ended + together.updating}
            busy |= {job.conversation_id for job in joining}
            job = self.take_job(lambda job, busy=busy: getattr(job, "conversation_id", None) not in busy)
            if job is None:
                return joining
            if isinstance(job, TurnJob) and batchable(self._plan(job)):
                joining.append(job)
            else:
                together.ran += 1
                self._run_between(job)
        return joining

    def _run_between(self, job, work: Callable[[], None] | None = None) -> None:
        """Run a job (or ``work`` for it) between two steps of the batch, reporting its failure as
        the worker's loop does."""
        if work is None:
            self.run_job(job)
            return
        try:
            work()
        except Exception as error:  # noqa: BLE001 - reported, the worker goes on
            self._failed(job, error, format_exc())

    # ----- after an answer

    def _finish(self, job: TurnJob, previous_stm, previous_turn: int, answer: DecodedAnswer) -> _MemoryUpdate:
        """Post the answer; returns its memory update (with what the client got), not started."""
        prompt = self.tokenizer.query_ids(job.query)
        self.post(AnswerEnded(job.conversation_id, job.turn, answer.finish_reason, len(prompt)))
        self.post(
            AnswerFinished(
                job.conversation_id,
                job.turn,
                answer.text,
                len(answer.ids),
                answer.prompt_seconds,
                answer.ttft_seconds,
                answer.tokens_per_second,
                answer.stopped,
            )
        )
        # memorise what the client got: not the tokens decoded past a stop string
        interaction = self.tokenizer.interaction_ids(job.query, answer.text) if answer.cut else prompt + answer.ids
        stats = TurnStats(
            len(answer.ids), answer.prompt_seconds, answer.ttft_seconds, answer.tokens_per_second, 0.0, answer.stopped
        )
        return self._memory_update(job, previous_stm, previous_turn, interaction, answer.text, stats)

    def _absorb(self, job: TurnJob, plan: Absorb) -> None:
        session = self._open_session(job)
        self._starting(job)
        self.post(AnswerFinished(job.conversation_id, job.turn, plan.answer, 0, 0.0, 0.0, 0.0, False))
        interaction = self.tokenizer.interaction_ids(job.query, plan.answer)
        stats = TurnStats(0, 0.0, 0.0, 0.0, 0.0)
        self._complete_update(self._memory_update(job, session.stm, session.turn, interaction, plan.answer, stats))

    def _memory_update(
        self, job: TurnJob, stm, turn: int, interaction: list[int], answer: str, stats: TurnStats
    ) -> _MemoryUpdate:
        """The memory update of ``stm`` (after ``turn`` turns) with ``interaction``, not started."""
        limit = self.model.config.encoder.seq_len
        if len(interaction) > limit:  # a stop-string cut answer re-tokenized, one EOS longer than decoded
            interaction = [*interaction[: limit - 1], self.tokenizer.eos_id]
        return _MemoryUpdate(job, stm, turn, interaction, answer, stats, time.perf_counter())

    def _start_update(self, updates: list[_MemoryUpdate]) -> None:
        """Start Session's memory updates of ``updates`` as one batch, on a stream of their own, so
        that answers decoded together go on meanwhile."""
        import mlx.core as mx

        from rxt_mlx.batch import update_memories

        if self._update_stream is None:
            self._update_stream = mx.new_stream(mx.default_device())
        with mx.stream(self._update_stream):
            stms = update_memories(
                self.model, [update.previous_stm for update in updates], [update.interaction for update in updates]
            )
        mx.async_eval(stms)
        for update, stm in zip(updates, stms, strict=True):
            update.stm, update.steps = stm, 0

    def _complete_update(self, update: _MemoryUpdate) -> None:
        """Make the updated memory the conversation's Session and hand its snapshot to the writer,
        which posts TurnSaved once the file is on disk."""
        from rxt_mlx.session import Session
        from rxt_mlx.stm import stm_file_bytes

        if update.stm is None:
            self._start_update([update])
        job = update.job
        session = Session(self.model, self.tokenizer, stm=update.stm, turn=update.turn + 1)
        self.set_session(job.conversation_id, session)
        change = tuple(memory_change(update.previous_stm, session.stm))
        seconds = time.perf_counter() - update.started
        stats = replace(update.stats, memory_update_seconds=seconds, memory_change=change)
        data, _ = stm_file_bytes(job.snapshot, session.stm, model_fingerprint=self.fingerprint, turn=job.turn)
        saved = TurnSaved(job.conversation_id, job.turn, job.query, update.answer, stats, job.snapshot)
        self._snapshots.write(
            job.snapshot, data, lambda: self.post(saved), lambda error, details: self._failed(job, error, details)
        )


@dataclass
class _MemoryUpdate:
    """A turn's memory update: ``stm`` (None until started) is computed from ``previous_stm`` and
    ``interaction``; ``steps``: decoder steps since the answer ended, then since it started."""

    job: TurnJob
    previous_stm: Any
    turn: int
    interaction: list[int]
    answer: str
    stats: TurnStats
    started: float
    stm: Any = None
    steps: int = 0


@dataclass
class _Together:
    """The answers decoded together: the batch, its rows (job, Session before the turn, AnswerRow),
    the tokens (lazy, one per row) that its next step reads, the memory updates of rows that
    left (``ended``: not started; ``updating``: not saved yet), and how many other queued jobs
    ``ran`` between two steps."""

    batch: Any
    rows: list[tuple[TurnJob, Any, AnswerRow]] = field(default_factory=list)
    tokens: Any = None
    ended: list[_MemoryUpdate] = field(default_factory=list)
    updating: list[_MemoryUpdate] = field(default_factory=list)
    ran: int = 0


def greedy(logits):
    """The greedy choice from logits (B, V), as Session's sampler takes it (from log-probabilities)."""
    import mlx.core as mx

    return mx.argmax(logits - mx.logsumexp(logits, axis=-1, keepdims=True), axis=-1)


def batchable(plan: TurnPlan) -> bool:
    """Whether a turn can be a row of a batch: a greedy answer without logits processors (sampled
    answers keep Session's own random stream, so a seed gives the same answer as alone)."""
    options = plan.options
    return isinstance(plan, Generate) and options.temperature == 0 and options.repetition_penalty in (None, 1.0)
