"""Models by Hub repo id: download, convert once into the cache, reuse; every bad input's message.

A tiny rxlm checkpoint is placed in a temporary Hugging Face cache exactly as huggingface_hub
leaves a finished download, and read back through the real ``snapshot_download`` with
``HF_HUB_OFFLINE=1``; the cases that need the Hub to answer (a repo or revision that does not
exist, a dropped connection) talk to a local fake Hub server. Nothing reaches the network.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rxt_convert.cli import convert as convert_command
from rxt_convert.reference.checkpoint import save_rxlm

import rxt_mlx
from rxt_mlx import hub as hub_module
from rxt_mlx import model_cache
from rxt_mlx.describe import describe_model, parameter_count
from rxt_mlx.hub import HubError, HubUnreachable, resolve_model
from rxt_mlx.model import load_model
from tests.factories import VOCAB_SIZE, tiny_config, write_model_folder
from tests.fake_hub import COMMIT, FakeHubServer, LocalHub, folder_files
from tests.test_convert import assert_same_logits, saved, tiny_reference
from tests.tokenizer_factories import write_bpe_tokenizer

REPO = "org/tiny-rxt"
ENTRY = f"org--tiny-rxt--{COMMIT[:12]}--auto"
BIN = Path(sys.executable).parent


@pytest.fixture
def hub(tmp_path, monkeypatch) -> LocalHub:
    return LocalHub(tmp_path, monkeypatch)


@pytest.fixture
def conversions(monkeypatch) -> list[Path]:
    """The sources the real converter (found through its entry point) was run on."""
    calls = []
    find = hub_module.find_converter

    def counting(repo):
        converter = find(repo)

        def run(source, *args, **kwargs):
            calls.append(source)
            return converter(source, *args, **kwargs)

        return run

    monkeypatch.setattr(hub_module, "find_converter", counting)
    return calls


@pytest.fixture
def reference():
    return tiny_reference()


@pytest.fixture
def published(hub, tmp_path, reference) -> Path:
    """The rxlm folder of ``reference``, also in the Hub cache as ``REPO``."""
    source = saved(tmp_path, reference)
    hub.publish(REPO, source)
    return source


def cached_names(hub: LocalHub) -> list[str]:
    """Everything in the cache of converted models, hidden partial folders included."""
    models = hub.converted / "models"
    return sorted(path.name for path in models.iterdir()) if models.exists() else []


def run_convert(argv, capsys) -> tuple[int, str, str]:
    try:
        status = convert_command([str(arg) for arg in argv])
    except SystemExit as exit_:
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# --- by repo id, through the real download and cache code ----------------------------------------


def test_load_by_repo_id_converts_once_then_reuses_the_cache(hub, published, reference, conversions, capsys, tmp_path):
    model, tokenizer = rxt_mlx.load(REPO)
    entry = hub.converted / "models" / ENTRY
    assert len(conversions) == 1 and cached_names(hub) == [ENTRY]
    assert model_cache.read_record(entry)["commit"] == COMMIT
    assert_same_logits(reference, entry)
    err = capsys.readouterr().err
    assert f"converting {REPO}@0123456 to rxt-mlx (auto)" in err
    assert f"loading {REPO}@0123456 (auto) from {entry}" in err
    inode, written = entry.stat().st_ino, (entry / "model.safetensors").stat().st_mtime_ns

    again, _ = rxt_mlx.load(REPO)
    assert len(conversions) == 1
    assert entry.stat().st_ino == inode and (entry / "model.safetensors").stat().st_mtime_ns == written
    assert again.fingerprint == model.fingerprint
    assert "converting" not in capsys.readouterr().err

    assert run_convert([published, tmp_path / "out", "--no-progress"], capsys)[0] == 0
    assert load_model(tmp_path / "out").fingerprint == model.fingerprint  # the same as converting the folder


def test_precisions_are_cached_apart_and_listed_and_deleted(hub, published, conversions, capsys):
    model, _ = rxt_mlx.load(REPO, dtype="bfloat16", q_bits=8, q_group_size=32, progress=False)
    rxt_mlx.load(REPO, progress=False)
    quantized = f"org--tiny-rxt--{COMMIT[:12]}--bfloat16-q8g32"
    assert len(conversions) == 2 and cached_names(hub) == [ENTRY, quantized]
    assert model.config.extra["quantization"] == {"bits": 8, "group_size": 32}
    assert "bfloat16 with 8-bit weights (group 32)" in describe_model(model, hub.converted / "models" / quantized)

    status, out, _ = run_convert(["--list"], capsys)
    lines = out.splitlines()
    assert status == 0 and lines[0].split() == ["NAME", "SIZE", "CONVERTED"]
    assert [line.split()[0] for line in lines[1:3]] == [ENTRY, quantized]
    assert all(line.split()[2] in ("kB", "MB") for line in lines[1:3])
    assert lines[3].startswith("2 models, ") and lines[3].endswith(f"in {hub.converted / 'models'}")

    assert run_convert(["--delete", quantized], capsys)[:2] == (0, f"deleted {hub.converted / 'models' / quantized}\n")
    assert cached_names(hub) == [ENTRY]
    assert run_convert(["--delete", REPO], capsys)[0] == 0 and cached_names(hub) == []
    status, _, err = run_convert(["--delete", REPO], capsys)
    assert status == 1 and f"no cached model named '{REPO}'" in err
    assert run_convert(["--list"], capsys)[1] == f"no converted models cached in {hub.converted / 'models'}\n"


def test_rxt_chat_plain_by_repo_id_answers_like_the_converted_folder(hub, published, capsys, tmp_path):
    assert run_convert([published, tmp_path / "folder", "--no-progress"], capsys)[0] == 0
    env = {**os.environ, **hub.env}

    def chat(model):
        command = [str(BIN / "rxt-chat"), "--plain", "--model", str(model), "--max-tokens", "8"]
        result = subprocess.run(command, input="Hi, I'm Ann.\n", capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr
        return result

    by_repo = chat(REPO)
    by_folder = chat(tmp_path / "folder")
    assert by_repo.stdout == by_folder.stdout and by_repo.stdout.strip()
    assert f"converting {REPO}@0123456" in by_repo.stderr and f"loading {REPO}@0123456" in by_repo.stderr
    assert f"model: {REPO}@0123456 (converted, auto): " in by_repo.stderr
    assert (
        f"model: {tmp_path / 'folder'}: " in by_folder.stderr
        and "parameters, float32, context 64 tokens" in by_folder.stderr
    )
    reused = chat(REPO)
    assert reused.stdout == by_repo.stdout and "converting" not in reused.stderr
    assert cached_names(hub) == [ENTRY]


def test_a_repo_holding_an_rxt_mlx_folder_is_used_as_downloaded(hub, conversions, tmp_path):
    folder = write_model_folder(tmp_path / "mlx", tiny_config(), seed=3, tokenizer_writer=write_bpe_tokenizer)
    snapshot = hub.publish("org/tiny-mlx", folder)
    assert resolve_model("org/tiny-mlx", log=lambda line: None) == snapshot
    model, _ = rxt_mlx.load("org/tiny-mlx")
    assert conversions == [] and cached_names(hub) == []
    assert model.fingerprint == load_model(folder).fingerprint
    assert describe_model(model, snapshot).startswith("org/tiny-mlx@0123456: ")
    with pytest.raises(HubError, match="org/tiny-mlx is already an rxt-mlx model, used as published"):
        rxt_mlx.load("org/tiny-mlx", dtype="bfloat16")


def test_rxt_convert_takes_repo_ids_for_every_source(hub, reference, capsys, tmp_path):
    full = saved(tmp_path, reference)
    hub.publish(REPO, full)
    components = save_rxlm(reference, tmp_path / "components", layout="components")
    for name in ("decoder", "encoder", "memory_attention"):
        hub.publish(f"org/tiny-{name}", components / name)
    write_bpe_tokenizer(tmp_path / "tokenizer", vocab_size=VOCAB_SIZE)
    hub.publish("org/tiny-tokenizer", tmp_path / "tokenizer")

    status, _, err = run_convert([REPO, tmp_path / "a", "--no-progress"], capsys)
    assert status == 0, err
    assert_same_logits(reference, tmp_path / "a")
    argv = ["--decoder", "org/tiny-decoder", "--encoder", "org/tiny-encoder"]
    argv += ["--memory-attention", "org/tiny-memory_attention", "--tokenizer", "org/tiny-tokenizer"]
    status, _, err = run_convert([*argv, tmp_path / "b", "--no-progress"], capsys)
    assert status == 0, err
    assert_same_logits(reference, tmp_path / "b")
    status, out, err = run_convert([REPO, "--no-progress"], capsys)
    assert status == 0 and out == f"{hub.converted / 'models' / ENTRY}\n", err


def test_describe_model_names_source_size_precision_and_context(hub, published):
    model, _ = rxt_mlx.load(REPO, progress=False)
    layers, slots, dim = model.config.stm_shape
    count = parameter_count(model)
    assert describe_model(model, hub.converted / "models" / ENTRY) == (
        f"{REPO}@0123456 (converted, auto): {count / 1000:.3g}k parameters, float32, "
        f"context {model.config.decoder.seq_len} tokens, STM {layers}x{slots}x{dim}"
    )
    assert describe_model(model, "some/folder").startswith("some/folder: ")


# --- bad input: one line naming the cause, nothing half-written in the cache ---------------------


def test_offline_and_not_in_the_cache(hub):
    with pytest.raises(HubUnreachable) as error:
        rxt_mlx.load("org/absent")
    assert str(error.value) == (
        "org/absent is not a local folder, and not in the local Hugging Face cache; HF_HUB_OFFLINE is set, "
        "unset it to download"
    )
    assert cached_names(hub) == []


def test_a_revision_that_is_not_cached_offline(hub, published):
    with pytest.raises(
        HubUnreachable,
        match=r"org/tiny-rxt \(revision v9\) is not a local folder, and not in the local Hugging Face cache",
    ):
        rxt_mlx.load(REPO, revision="v9")


def test_a_plain_llm_is_not_an_rxt_model(hub, tmp_path, capsys):
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    (llama / "model.safetensors").write_bytes(b"\0" * 16)
    hub.publish("org/llama", llama)
    with pytest.raises(HubError) as error:
        rxt_mlx.load("org/llama")
    assert str(error.value) == (
        "org/llama is not an RxT model: its config.json has no decoder_config, encoder_config and "
        "memory_attention_config (it describes llama, LlamaForCausalLM)"
    )
    argv = ["--decoder", "org/llama", "--encoder", "org/llama", "--memory-attention", "org/llama", tmp_path / "out"]
    status, _, err = run_convert(argv, capsys)
    assert (
        status == 1
        and "rxt-convert: error: org/llama (--decoder) is not an RxT component: its config.json has no "
        "embed_dim and num_layers (it describes llama, LlamaForCausalLM)"
        in err
    )
    assert cached_names(hub) == []


def test_a_name_that_is_neither_a_folder_nor_a_repo_id(tmp_path):
    with pytest.raises(HubError, match="no such model folder, and not a Hub repo id"):
        rxt_mlx.load(tmp_path / "missing")


def test_a_full_disk_during_conversion_leaves_nothing(hub, published, monkeypatch):
    import rxt_mlx.model

    def full_disk(folder, weights, max_shard_bytes):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.safetensors").write_bytes(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rxt_mlx.model, "save_weights", full_disk)
    with pytest.raises(HubError) as error:
        rxt_mlx.load(REPO, progress=False)
    assert str(error.value) == (
        f"the disk is full: converting {REPO}@0123456 into {hub.converted / 'models'} ran out of space "
        "(No space left on device); nothing was cached; free some space or set RXT_MLX_CACHE to a folder on "
        "another disk"
    )
    assert cached_names(hub) == []


def test_a_checkpoint_that_cannot_be_converted(hub, tmp_path):
    source = saved(tmp_path, tiny_reference())
    config = json.loads((source / "config.json").read_text())
    config["decoder_config"]["embed_dim"] = 64
    (source / "config.json").write_text(json.dumps(config))
    hub.publish(REPO, source)
    with pytest.raises(HubError, match=rf"^cannot convert {REPO}@0123456: "):
        rxt_mlx.load(REPO, progress=False)
    assert cached_names(hub) == []


def test_without_the_converter_installed(hub, published, monkeypatch):
    monkeypatch.setattr(hub_module, "entry_points", lambda group: [])
    with pytest.raises(HubError) as error:
        rxt_mlx.load(REPO)
    assert str(error.value) == (
        f"{REPO} holds a PyTorch (rxlm) checkpoint, which needs converting, and the converter is not "
        "installed: pip install 'rxt-mlx[convert]'"
    )


def test_offline_with_the_hub_cache_gone_uses_the_cached_conversion(hub, published, capsys):
    rxt_mlx.load(REPO, progress=False)
    for path in sorted(hub.storage(REPO).rglob("*"), reverse=True):
        path.unlink() if path.is_file() or path.is_symlink() else path.rmdir()
    capsys.readouterr()
    rxt_mlx.load(REPO)
    assert "HF_HUB_OFFLINE is set, unset it to download; using the conversion cached on " in capsys.readouterr().err


@pytest.fixture
def server(published):
    server = FakeHubServer({REPO: folder_files(published)})
    yield server
    server.close()


def test_a_repo_or_revision_that_does_not_exist_on_the_hub(hub, server):
    hub.online(server.url)
    with pytest.raises(HubError) as error:
        rxt_mlx.load("org/nope")
    assert str(error.value) == (
        "org/nope is not a local folder, and no such model repository is on the Hugging Face Hub (if it is "
        "private, log in with hf auth login or set HF_TOKEN)"
    )
    with pytest.raises(HubError) as error:
        rxt_mlx.load(REPO, revision="v9")
    assert str(error.value) == "org/tiny-rxt has no revision 'v9' (no such branch, tag or commit)"


def test_an_interrupted_download_caches_nothing_and_resumes(hub, server, conversions, reference):
    hub.storage(REPO).rename(hub.home / "published")  # start from an empty Hub cache
    hub.online(server.url)
    server.cut_after = 2000
    with pytest.raises(HubError, match=rf"^the download of {REPO}@0123456 was interrupted \(RemoteProtocolError: "):
        rxt_mlx.load(REPO, progress=False)
    assert conversions == [] and cached_names(hub) == []
    server.cut_after = None
    rxt_mlx.load(REPO, progress=False)
    assert len(conversions) == 1 and cached_names(hub) == [ENTRY]
    assert_same_logits(reference, hub.converted / "models" / ENTRY)


def test_interrupted_then_offline(hub, server, monkeypatch):
    from huggingface_hub import constants

    hub.storage(REPO).rename(hub.home / "published")
    hub.online(server.url)
    server.cut_after = 2000
    with pytest.raises(HubError):
        rxt_mlx.load(REPO, progress=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubUnreachable) as error:
        rxt_mlx.load(REPO, progress=False)
    assert str(error.value) == (
        f"{REPO}@0123456 is only partly in the local Hugging Face cache (an interrupted download?) and "
        "HF_HUB_OFFLINE is set; unset it to finish the download"
    )
    assert cached_names(hub) == []


def test_no_network(hub, published):
    hub.storage(REPO).rename(hub.home / "published")
    hub.online("http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(HubUnreachable, match=r"^cannot reach the Hugging Face Hub to download org/tiny-rxt \("):
        rxt_mlx.load(REPO)
    assert cached_names(hub) == []


def test_the_converter_is_found_through_its_entry_point_and_the_core_never_imports_it():
    from rxt_convert.convert import convert_folder

    assert hub_module.find_converter(REPO) is convert_folder
    code = (
        "import sys, rxt_mlx, rxt_mlx.hub, rxt_mlx.model_cache, rxt_mlx.describe; print('rxt_convert' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr


def test_rxt_bench_and_rxt_eval_take_a_repo_id(hub, published, conversions, tmp_path, capsys):
    from rxt_mlx.bench.evaluate import main as evaluate_main
    from rxt_mlx.bench.latency import main as bench_main

    argv = ["--model", REPO, "--turns", "2", "--query-tokens", "8", "--answer-tokens", "8", "--warmup-turns", "0"]
    assert bench_main([*argv, "--out", str(tmp_path / "bench"), "--no-plot", "--no-progress"]) == 0
    assert evaluate_main(["--model", REPO, "--conversations", "1", "--max-tokens", "4"]) == 0
    assert len(conversions) == 1 and f"loading {REPO}@0123456" in capsys.readouterr().err
