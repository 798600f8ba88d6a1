"""rxt-train end to end on a tiny model: train -> export -> rxt-convert -> rxt_mlx.load -> Session."""

import json

import mlx.core as mx
import numpy as np
import pytest
import torch
from rxt_convert import train
from rxt_convert.convert import main as convert_main
from rxt_convert.reference.checkpoint import load_reference

import rxt_mlx
from rxt_mlx.bench import dialogues, evaluate
from rxt_mlx.session import AnswerDone, MemoryUpdated, Session

TINY = {
    "seed": 0,
    "embed_dim": 32,
    "num_layers": 2,
    "att_heads": 4,
    "att_groups": 2,
    "ff_dim": 64,
    "stm_size": 8,
    "seq_len": 64,
    "vocab_size": 400,
    "memory_gate": "linear",
    "memory_gate_init": 0.0,
    "tokenizer_conversations": 300,
    "warmup_steps": 2,
    "checkpoint_every": 3,
    "threads": 1,
    "stages": {
        "joint": {"steps": 40, "batch_size": 16, "lr": 0.01},
        "sft": {"steps": 3, "batch_size": 4, "lr": 0.003},
        "memory": {"steps": 3, "batch_size": 4, "lr": 0.003},
        "smat": {"steps": 6, "batch_size": 4, "lr": 0.003},
    },
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train")
    config = folder / "tiny.json"
    config.write_text(json.dumps(TINY))
    assert train.main(["--config", str(config), "--out", str(folder / "run")]) == 0
    return folder


@pytest.mark.slow
def test_losses_fall_and_every_stage_runs(trained):
    history = json.loads((trained / "run" / "rxlm" / "training.json").read_text())["history"]
    by_stage = {}
    for record in history:
        by_stage.setdefault(record["stage"], []).append(record)
    assert {name: len(records) for name, records in by_stage.items()} == {"joint": 40, "sft": 3, "memory": 3, "smat": 6}
    joint = [r["loss"] for r in by_stage["joint"]]
    assert np.mean(joint[-3:]) < 0.7 * np.mean(joint[:3])
    assert all(np.isfinite(r["loss"]) for r in history)


@pytest.mark.slow
def test_export_converts_and_runs_in_mlx(trained, tmp_path):
    export = trained / "run" / "rxlm"
    assert (export / "tokenizer.model").exists()
    assert convert_main([str(export), str(tmp_path / "mlx")]) == 0
    model, tokenizer = rxt_mlx.load(tmp_path / "mlx")
    reference = load_reference(export).eval()

    ids = tokenizer.interaction_ids("My name is Ann.", "Nice to meet you, Ann.")
    stm = np.random.default_rng(0).standard_normal((2, 1, 8, 32)).astype(np.float32)
    with torch.no_grad():
        expected = reference.decoder(torch.tensor([ids]), torch.from_numpy(stm)).numpy()
    actual = np.array(model.decoder(mx.array([ids]), mx.array(stm)))
    np.testing.assert_allclose(actual, expected, atol=2e-4, rtol=1e-4)
    mask = np.ones((1, len(ids)), dtype=bool)
    with torch.no_grad():
        expected = reference.update_memory(torch.from_numpy(stm), torch.tensor([ids]), torch.from_numpy(mask)).numpy()
    actual = np.array(model.update_memory(mx.array(stm), mx.array([ids]), mx.array(mask)))
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=1e-4)

    session = Session(model, tokenizer)
    events = list(session.interact("My name is Ann.", max_tokens=6))
    assert isinstance(events[-2], AnswerDone) and 1 <= events[-2].tokens <= 6
    assert isinstance(events[-1], MemoryUpdated) and session.turn == 1
    assert not np.allclose(np.array(session.stm), np.array(model.initial_stm(1, seed=0)))


@pytest.mark.slow
def test_resume_continues_exactly(trained, tmp_path, monkeypatch):
    """A run interrupted mid-stage and resumed ends with the same weights as an uninterrupted one."""
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({**TINY, "stages": {**TINY["stages"], "smat": {"steps": 0}}}))
    tokenizer = trained / "run" / "tokenizer.model"
    args = ["--config", str(config), "--tokenizer", str(tokenizer)]
    assert train.main([*args, "--out", str(tmp_path / "straight")]) == 0

    original = train.Trainer.stage_loss

    def interrupted(self, name, stage):
        if name == "joint" and self.step == 5:
            raise KeyboardInterrupt
        return original(self, name, stage)

    monkeypatch.setattr(train.Trainer, "stage_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train.main([*args, "--out", str(tmp_path / "resumed")])
    monkeypatch.setattr(train.Trainer, "stage_loss", original)
    saved = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert (saved["stage"], saved["step"]) == (0, 3)
    assert train.main([*args, "--out", str(tmp_path / "resumed"), "--resume"]) == 0

    straight = load_reference(tmp_path / "straight" / "rxlm").state_dict()
    resumed = load_reference(tmp_path / "resumed" / "rxlm").state_dict()
    for key, value in straight.items():
        torch.testing.assert_close(resumed[key], value, msg=key)


def test_fixed_training_stm_is_the_session_default():
    from rxt_mlx.model import RxT

    config = train.model_config(train.TrainConfig.from_dict({k: v for k, v in TINY.items() if k != "stages"}, "t"), 400)
    expected = np.array(RxT(config).initial_stm(batch=1, seed=3))
    np.testing.assert_array_equal(train.mlx_initial_stm(config, 3).numpy(), expected)


@pytest.mark.slow
def test_init_from_and_stop_at(trained, tmp_path):
    """A later segment starts from another run's weights; ``stop_at`` pauses it, ``--resume`` goes on."""
    config = tmp_path / "segment.json"
    stages = {"sft": {"steps": 6, "batch_size": 4, "lr": 0.003, "stop_at": 2}, "smat": {"steps": 2, "batch_size": 4}}
    config.write_text(json.dumps({**TINY, "stages": stages}))
    run = trained / "run"
    args = ["--config", str(config), "--out", str(tmp_path / "segment"), "--tokenizer", str(run / "tokenizer.model")]
    assert train.main([*args, "--init-from", str(run / "checkpoint.pt"), "--start-stage", "sft"]) == 0
    history = json.loads((tmp_path / "segment" / "rxlm" / "training.json").read_text())["history"]
    previous = json.loads((run / "rxlm" / "training.json").read_text())["history"]
    assert history[: len(previous)] == previous
    assert [(r["stage"], r["step"]) for r in history[len(previous) :]] == [("sft", 1), ("sft", 2)]
    paused = torch.load(tmp_path / "segment" / "checkpoint.pt", weights_only=False)
    assert (train.STAGES[paused["stage"]], paused["step"]) == ("sft", 2) and paused["optimizer"] is not None

    # the next session raises stop_at (here: removes it) and resumes the same schedule
    stages["sft"].pop("stop_at")
    config.write_text(json.dumps({**TINY, "stages": stages}))
    assert train.main([*args, "--resume"]) == 0
    history = json.loads((tmp_path / "segment" / "rxlm" / "training.json").read_text())["history"]
    assert [(r["stage"], r["step"]) for r in history[len(previous) :]] == [
        *(("sft", step) for step in range(1, 7)),
        ("smat", 1),
        ("smat", 2),
    ]


@pytest.mark.slow
def test_init_from_an_mlx_model_folder(trained, tmp_path):
    """--init-from an MLX model folder (how the demo's later segments start): the weights carry over exactly."""
    assert convert_main([str(trained / "run" / "rxlm"), str(tmp_path / "mlx")]) == 0
    config = tmp_path / "segment.json"
    config.write_text(json.dumps({**TINY, "stages": {"smat": {"steps": 1, "batch_size": 2, "lr": 0.0}}}))
    run = trained / "run"
    args = ["--config", str(config), "--out", str(tmp_path / "segment"), "--tokenizer", str(run / "tokenizer.model")]
    assert train.main([*args, "--init-from", str(tmp_path / "mlx"), "--start-stage", "smat"]) == 0
    before = load_reference(run / "rxlm").state_dict()
    after = load_reference(tmp_path / "segment" / "rxlm").state_dict()
    for key, value in before.items():
        torch.testing.assert_close(after[key], value, msg=key)


@pytest.mark.slow
def test_rxt_eval_scores_every_question(trained, tmp_path):
    """rxt-eval on a trained tiny model: every question lands in one bin, with and without memory."""
    assert convert_main([str(trained / "run" / "rxlm"), str(tmp_path / "mlx")]) == 0
    out = tmp_path / "eval.json"
    args = ["--model", str(tmp_path / "mlx"), "--conversations", "6", "--max-tokens", "8", "--json", str(out)]
    assert evaluate.main(args) == 0
    report = json.loads(out.read_text())
    conversations = dialogues.generate_conversations(6, "heldout", seed=1234)
    distances = [turn.distance for c in conversations for _, turn in c.questions]
    assert report["split"] == "heldout" and report["conversations"] == 6
    for condition in ("memory", "ablated"):
        recall = report["recall"][condition]
        assert recall["all"]["questions"] == len(distances)
        assert recall["1-6"]["questions"] == sum(d <= 6 for d in distances)
        assert recall["7+"]["questions"] == sum(d > 6 for d in distances)
        for name in ("1", "2", "3", "4", "5", "6"):
            assert recall[name]["questions"] == distances.count(int(name))
        assert 0 <= recall["all"]["entity"] <= 1 and recall["all"]["exact"] <= recall["all"]["entity"]
    slots = dialogues.build_slots()
    heldout_chance = np.mean(
        [
            1 / len(slots[t.slot].values["heldout"]) / (12 if t.slot == "pet" else 1)
            for c in conversations
            for _, t in c.questions
        ]
    )
    assert report["recall"]["memory"]["all"]["chance"] == pytest.approx(heldout_chance)
    facts = [t.slot for c in conversations for _, t in c.questions if t.distance <= 6]
    by_fact = report["by_fact"]
    assert {slot: entry["recall_1_6"]["questions"] for slot, entry in by_fact.items() if slot in facts} == {
        slot: facts.count(slot) for slot in facts
    }
    assert sum(entry["recall_1_6"]["questions"] for entry in by_fact.values()) == len(facts)
    statements = [t for c in conversations for t in c.turns if t.kind == "statement"]
    assert sum(entry["acknowledged"]["questions"] for entry in by_fact.values()) == len(statements)
    assert report["answer_perplexity"] > 1 and np.isfinite(report["answer_perplexity"])
    assert [t["query"] for t in report["example"]] == [t.query for t in conversations[0].turns]


class _FixedTokenizer:
    """Every interaction is 6 ids whose answer starts at index 3."""

    def interaction(self, turn):
        return [2, 5, 6, 7, 8, 3], 3


def test_statement_weight_weighs_acknowledgements_and_not_told_answers():
    from rxt_convert.train_batches import collate_turns
    from rxt_convert.train_stages import AnswerScore

    kinds = ["statement", "question", "smalltalk", "not_told"]
    batch = collate_turns(_FixedTokenizer(), [dialogues.Turn("q", "a", kind) for kind in kinds], pad_id=0)
    assert batch.recall_mask.any(dim=1).tolist() == [False, True, False, False]
    assert batch.statement_mask.any(dim=1).tolist() == [True, False, False, True]
    assert batch.statement_mask[0].tolist() == batch.answer_mask[0].tolist() == [False, False, True, True, True]
    logits = torch.randn(4, 6, 10, generator=torch.Generator().manual_seed(0))
    per_token = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), batch.targets, reduction="none")
    row_loss = (per_token * batch.answer_mask).sum(dim=1)  # 3 answer tokens a row
    for recall_weight, statement_weight in ((1.0, 1.0), (5.0, 1.0), (5.0, 3.0)):
        score = AnswerScore(torch.device("cpu"))
        score.add(logits, batch, recall_weight, statement_weight)
        weights = torch.tensor([statement_weight, recall_weight, 1.0, statement_weight])
        expected = (row_loss * weights).sum() / (3 * weights.sum())
        assert score.loss.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"statement_weight": "heavy"}, "statement_weight must be a finite number, got 'heavy'"),
        ({"stages": {"smat": {"lr": "fast"}}}, "stages.smat: lr must be a finite number, got 'fast'"),
        ({"open_values": "yes"}, "open_values must be true or false, got 'yes'"),
    ],
)
def test_training_config_values_of_the_wrong_type_are_refused(values, message):
    with pytest.raises(SystemExit, match=message):
        train.TrainConfig.from_dict(values, "cfg.json")
