"""rxt-convert: an rxlm / PyTorch RxT checkpoint to an MLX model folder.

Reads a full-model rxlm folder, three per-component folders, or an ``rxt-train``
checkpoint, from disk or downloaded from the Hugging Face Hub (:mod:`rxt_mlx.hub`); checks every
weight against the layout the config describes (missing, unexpected and mis-shaped weights are
errors, never random init); writes ``config.json``, the weights (``model.safetensors``, or shards
with an index for large models, streamed one tensor at a time) and the tokenizer files into the
output folder, or into the cache of converted models. :func:`convert_folder` is the
converter ``rxt_mlx.load`` finds through the ``rxt_mlx.converters`` entry point.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rxt_mlx import hub, model_cache
from rxt_mlx.config import MEMORY_ATTENTION_VARIANTS, ConfigError, RxTConfig, TokenizerConfig
from rxt_mlx.errors import RxTError
from rxt_mlx.model import MAX_SHARD_BYTES

from . import canonical
from .sources import Source, find_tokenizer, read_json, read_source, special_token_ids, tokenizer_files

Q_BITS = (4, 8)
Q_GROUP_SIZES = (32, 64, 128)
SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}

DESCRIPTION = """\
Convert an RxT checkpoint saved by rxlm (save_pretrained / push_to_hub layout) or by rxt-train
to an MLX model folder for rxt-chat and rxt_mlx.load.

Sources:
  SRC is a full-model folder (config.json with decoder_config, encoder_config,
  memory_attention_config, tokenizer_config, memory_attention_variant, plus model.safetensors,
  sharded safetensors with an index, or pytorch_model.bin), a folder with decoder/, encoder/ and
  memory_attention/ sub-folders, or an rxt-train checkpoint file (.pt).
  Or give the three component folders with --decoder, --encoder and --memory-attention.
  Each of them may be a Hugging Face Hub repo id instead (ReactiveAI/RxT-Beta-Supervised),
  downloaded with your token and cache settings (HF_TOKEN, HF_HOME, HF_HUB_OFFLINE).

Without OUT, a Hub repo is converted into the cache of converted models, where
rxt_mlx.load("org/name") and --model org/name find it (rxt-convert --list, --delete NAME).

RoPE tables and the saved STM are dropped (inference rebuilds them). Legacy MoE expert
lists are stacked into the vectorized layout. The shared embedding is taken from whichever of
the decoder/encoder copies is stored.
"""

EPILOG = """\
Note on memory_attention_variant='interlayer': rxlm 0.3.65 and later build the self-interlayer
network for that name (a bug). rxt-convert keeps the name, and rxt_mlx runs the true interlayer
variant for it, the math of the paper and of rxlm before 0.3.65. Pass --variant self-interlayer
for checkpoints trained with the buggy builder.
"""


class ConversionError(RxTError, RuntimeError):
    """The conversion cannot produce a correct model; the message says why."""


@dataclass
class Options:
    """What to convert and how; built from the command line by :func:`main`."""

    output: Path | None
    source: Path | None = None
    decoder: Path | None = None
    encoder: Path | None = None
    memory_attention: Path | None = None
    variant: str | None = None
    tokenizer: Path | None = None
    tokenizer_config: str | None = None
    dtype: str | None = None
    quantize: bool = False
    q_bits: int = 4
    q_group_size: int = 64
    overwrite: bool = False
    progress: bool | None = None
    revision: str | None = None
    max_shard_bytes: int = MAX_SHARD_BYTES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rxt-convert",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "source", nargs="?", type=Path, metavar="SRC", help="checkpoint folder, .pt file or Hub repo id (org/name)"
    )
    parser.add_argument(
        "output",
        nargs="?",
        type=Path,
        metavar="OUT",
        help="output folder (must not exist, see --overwrite); without it a Hub repo goes into the cache",
    )
    components = parser.add_argument_group("per-component source (instead of SRC)")
    components.add_argument("--decoder", type=Path, metavar="DIR|REPO", help="decoder folder (flat config + model.*)")
    components.add_argument("--encoder", type=Path, metavar="DIR|REPO", help="encoder folder")
    components.add_argument("--memory-attention", type=Path, metavar="DIR|REPO", help="memory-attention folder")
    parser.add_argument("--revision", help="branch, tag or commit of the Hub repos (default: main)")
    parser.add_argument(
        "--variant",
        choices=MEMORY_ATTENTION_VARIANTS,
        help="memory-attention variant (default: from config.json, or inferred from the weight names; "
        "'interlayer' means the true interlayer math, see below)",
    )
    parser.add_argument(
        "--tokenizer",
        type=Path,
        metavar="DIR_OR_FILE|REPO",
        help="tokenizer.json / tokenizer.model, its folder or Hub repo (default: look in the source folders)",
    )
    parser.add_argument(
        "--tokenizer-config",
        metavar="JSON",
        help="special-token ids (bos/eos/query/answer_token_id ...): a JSON file or an inline JSON object "
        "(default: config.json's tokenizer_config, else the tokenizer's [BOS]/[EOS]/[Q]/[A] tokens)",
    )
    parser.add_argument(
        "--dtype",
        choices=tuple(canonical.DTYPES),
        help="output weight dtype (default: the source's dtype: float32, float16 or bfloat16)",
    )
    quantization = parser.add_argument_group("quantization")
    quantization.add_argument("-q", "--quantize", action="store_true", help="quantize linear and expert weights")
    quantization.add_argument("--q-bits", type=int, choices=Q_BITS, default=None, help="bits per weight (default 4)")
    quantization.add_argument(
        "--q-group-size", type=int, choices=Q_GROUP_SIZES, default=None, help="quantization group size (default 64)"
    )
    parser.add_argument(
        "--max-shard-size",
        type=parse_size,
        default=MAX_SHARD_BYTES,
        metavar="SIZE",
        help="largest weight file, e.g. 5GiB (the default, as mlx-lm), 500MB or a byte count; "
        "larger models are written as model-0000k-of-0000N.safetensors with model.safetensors.index.json",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it is an existing rxt-mlx folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    cache = parser.add_argument_group(f"the cache of converted models ({model_cache.CACHE_ENV} moves it)")
    cache.add_argument("--list", action="store_true", help="list the cached models with their sizes")
    cache.add_argument("--delete", metavar="NAME", help="delete a cached model (a name from --list, or org/name: all)")
    return parser


def options_from(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Options:
    """The conversion the command line asks for (``--list`` and ``--delete`` are handled by :func:`main`)."""
    if not args.quantize and (args.q_bits is not None or args.q_group_size is not None):
        parser.error("--q-bits/--q-group-size need -q/--quantize")
    components = args.decoder or args.encoder or args.memory_attention
    if components and args.output is None:
        args.source, args.output = None, args.source
    if args.output is None:
        if args.source is None:
            parser.error("give SRC OUT, the component sources and OUT, or --list / --delete NAME")
        if args.source.exists() or not hub.is_repo_id(str(args.source)):
            parser.error("OUT is required (only a Hub repo id can be converted into the cache without one)")
        if args.variant or args.tokenizer or args.tokenizer_config or args.overwrite:
            parser.error("--variant, --tokenizer, --tokenizer-config and --overwrite need OUT")
    return Options(
        output=args.output,
        source=args.source,
        decoder=args.decoder,
        encoder=args.encoder,
        memory_attention=args.memory_attention,
        variant=args.variant,
        tokenizer=args.tokenizer,
        tokenizer_config=args.tokenizer_config,
        dtype=args.dtype,
        quantize=args.quantize,
        q_bits=args.q_bits or 4,
        q_group_size=args.q_group_size or 64,
        overwrite=args.overwrite,
        progress=False if args.no_progress else None,
        revision=args.revision,
        max_shard_bytes=args.max_shard_size,
    )


def parse_size(text: str) -> int:
    """A size in bytes from ``5GiB``, ``500MB``, ``64KB`` or a plain byte count (``--max-shard-size``)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    unit = match[2].upper() if match else None
    if unit not in SIZE_UNITS or float(match[1]) * SIZE_UNITS[unit] < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 5GiB, 500MB or a number of bytes)")
    return int(float(match[1]) * SIZE_UNITS[unit])


def fetch_hub_sources(options: Options, log=hub.log_to_stderr) -> Options:
    """``options`` with each Hub repo id among the sources replaced by its downloaded snapshot folder."""

    def local(path: Path | None, fetch) -> Path | None:
        if path is None or path.exists() or not hub.is_repo_id(str(path)):
            return path
        return fetch(str(path), revision=options.revision, progress=options.progress, log=log)

    def component(role: str):
        return lambda repo, **kwargs: hub.fetch_component(repo, role, **kwargs)

    return dataclasses.replace(
        options,
        source=local(options.source, hub.fetch_checkpoint),
        decoder=local(options.decoder, component("decoder")),
        encoder=local(options.encoder, component("encoder")),
        memory_attention=local(options.memory_attention, component("memory_attention")),
        tokenizer=local(options.tokenizer, hub.fetch_tokenizer),
    )


def resolve_tokenizer(options: Options, source: Source, log=print) -> tuple[Path, dict[str, Any]]:
    """The tokenizer location and the template ids for the output config.

    Ids come from --tokenizer-config, else the checkpoint's tokenizer_config, else the
    tokenizer's own [BOS]/[EOS]/[Q]/[A]... tokens; ids that disagree with those tokens are reported.
    """
    candidates = [options.tokenizer] if options.tokenizer else source.tokenizer_dirs
    location = find_tokenizer(candidates)
    if location is None:
        where = ", ".join(str(path) for path in candidates)
        raise ConversionError(
            f"no tokenizer (tokenizer.json or tokenizer.model) found in {where}; pass --tokenizer DIR_OR_FILE"
        )
    if options.tokenizer_config is not None:
        ids = _parse_tokenizer_config(options.tokenizer_config)
    elif isinstance(source.config.get("tokenizer_config"), dict):
        ids = source.config["tokenizer_config"]
    else:
        ids = special_token_ids(location)
    for name, token_id in special_token_ids(location).items():
        if ids.get(name) is not None and ids[name] != token_id:
            log(f"warning: tokenizer_config {name} is {ids[name]}, but the tokenizer has that token at id {token_id}")
    try:
        TokenizerConfig.from_dict(ids)
    except ConfigError as error:
        raise ConversionError(
            f"template token ids: {error} (pass --tokenizer-config with bos/eos/query/answer_token_id)"
        ) from None
    return location, ids


def _parse_tokenizer_config(value: str) -> dict[str, Any]:
    if Path(value).is_file():
        ids = read_json(Path(value), "--tokenizer-config")
    else:
        try:
            ids = json.loads(value)
        except json.JSONDecodeError as error:
            raise ConversionError(f"--tokenizer-config: {value!r} is neither a file nor valid JSON ({error})") from None
    if not isinstance(ids, dict):
        raise ConversionError(f"--tokenizer-config: expected a JSON object of token ids, got {type(ids).__name__}")
    if isinstance(ids.get("tokenizer_config"), dict):
        ids = ids["tokenizer_config"]
    return ids


def prepare_output(output: Path, overwrite: bool) -> None:
    if not output.exists():
        return
    if not overwrite:
        raise ConversionError(f"{output} already exists; pass --overwrite to replace it")
    config = output / "config.json"
    is_ours = config.is_file() and _is_rxt_mlx_config(config)
    if not output.is_dir() or not (is_ours or not any(output.iterdir())):
        raise ConversionError(f"{output} is not an rxt-mlx model folder; refusing to overwrite it")


def _is_rxt_mlx_config(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("format") == "rxt-mlx"
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def convert_folder(
    source: Path,
    output: Path,
    *,
    dtype: str | None = None,
    q_bits: int | None = None,
    q_group_size: int = 64,
    progress: bool | None = None,
    log=print,
) -> Path:
    """Convert the checkpoint folder ``source`` into the new folder ``output``.

    The ``rxlm`` converter of the ``rxt_mlx.converters`` entry-point group: what ``rxt_mlx.load``
    runs on a downloaded rxlm repo. Raises the project's errors (:class:`RxTError`) on bad input.
    """
    options = Options(
        output=output,
        source=source,
        dtype=dtype,
        quantize=q_bits is not None,
        q_bits=q_bits or 4,
        q_group_size=q_group_size,
        progress=progress,
    )
    return convert(options, log)


def convert(options: Options, log=print) -> Path:
    """Run one conversion; returns the output folder. Raises ConversionError and friends on bad input."""
    prepare_output(options.output, options.overwrite)
    source = read_source(
        options.source,
        decoder=options.decoder,
        encoder=options.encoder,
        memory_attention=options.memory_attention,
        variant=options.variant,
    )
    log(f"reading {source.description}: {len(source.tensors)} tensors")
    tokenizer_location, ids = resolve_tokenizer(options, source, log)
    config_values = dict(source.config, tokenizer_config=ids)
    for note in canonical.adapt_config_for_legacy_moe(config_values, source.tensors):
        log(note)
    config = RxTConfig.from_dict(config_values)
    _check_template_ids(config)
    _check_interlayer_quirk(config, source)
    planned = canonical.plan(source.tensors)
    canonical.check(planned, canonical.expected_shapes(config))
    canonical.check_rope(source.tensors, config)
    dtype = options.dtype or canonical.source_dtype(source.tensors, planned)
    weights = canonical.iter_materialized(source.tensors, planned, dtype, options.progress)
    shapes = {key: entry.shape for key, entry in planned.items()}
    with tempfile.TemporaryDirectory(prefix=f".{options.output.name}.", dir=_parent(options.output)) as staging:
        staging = Path(staging) / options.output.name
        write_mlx_model(config, shapes, weights, dtype, options, staging)
        for path in tokenizer_files(tokenizer_location):
            shutil.copy2(path, staging / path.name)
        if options.output.exists():
            shutil.rmtree(options.output)
        staging.rename(options.output)
    log(f"{len(planned)} weights checked and converted to {dtype}")
    return options.output


def _check_template_ids(config: RxTConfig) -> None:
    vocab_size = config.decoder.vocab_size
    for name, value in config.tokenizer.to_dict().items():
        if value is not None and not 0 <= value < vocab_size:
            raise ConversionError(
                f"tokenizer_config: {name} {value} is outside the vocabulary (vocab_size {vocab_size})"
            )


def _check_interlayer_quirk(config: RxTConfig, source: Source) -> None:
    gates = "memory_attention.model.interlayer_gate_layers."
    if config.memory_attention_variant == "interlayer" and any(key.startswith(gates) for key in source.tensors):
        raise ConversionError(
            "memory_attention_variant is 'interlayer' but the checkpoint has interlayer_gate_layers weights: "
            "rxlm >= 0.3.65 builds self-interlayer for 'interlayer'; pass --variant self-interlayer to convert "
            "it with the math it was trained with"
        )


def _parent(output: Path) -> Path:
    parent = output.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    return parent


def write_mlx_model(
    config: RxTConfig, shapes: dict[str, tuple[int, ...]], weights, dtype: str, options: Options, folder: Path
) -> None:
    """Write canonical ``weights`` ((key, array) pairs of the given ``shapes``) as an MLX model folder.

    The MLX names and shapes are checked against ``RxT(config)`` before any weight is read. Then
    each tensor is sanitized, quantized if asked and written as it arrives, in shards of at most
    ``options.max_shard_bytes``, so a conversion holds at most one output shard in memory. The
    ``RxT`` is built lazily and never evaluated: it only names the parameters and the quantized
    modules.
    """
    import mlx.core as mx

    from rxt_mlx import model as mlx_model
    from rxt_mlx.weights import check_weights, sanitize

    target = getattr(mx, dtype)
    model = mlx_model.RxT(config)
    check_weights(model, sanitize({key: mx.zeros(shape, dtype=target) for key, shape in shapes.items()}))
    converted = (item for key, array in weights for item in sanitize({key: array}).items())
    if options.quantize:
        mlx_model.quantize_model(model, options.q_bits, options.q_group_size)
        converted = mlx_model.quantized_weights(model, converted)
    mlx_model.save_config(model.config, folder)
    mlx_model.save_weights(folder, converted, options.max_shard_bytes)


def convert_into_cache(options: Options) -> Path:
    """Convert the Hub repo ``options.source`` into the cache of converted models (as ``rxt_mlx.load`` would)."""
    return hub.resolve_model(
        str(options.source),
        revision=options.revision,
        dtype=options.dtype,
        q_bits=options.q_bits if options.quantize else None,
        q_group_size=options.q_group_size,
        progress=options.progress,
    )


def manage_cache(list_models: bool, delete: str | None) -> None:
    """``--list`` (name, size and date of every cached model) and ``--delete NAME``."""
    if delete:
        for folder in model_cache.delete(delete):
            print(f"deleted {folder}")
    if list_models:
        print(model_cache.listing())


def main(argv: list[str] | None = None) -> int:
    """``rxt-convert``'s work; returns 0. Bad input raises the project's errors (:class:`RxTError`),
    which the console entry point (:func:`rxt_convert.cli.convert`) reports as one line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list or args.delete:
        if args.source or args.output:
            parser.error("--list and --delete take no SRC or OUT")
        manage_cache(args.list, args.delete)
        return 0
    options = options_from(parser, args)
    if options.output is None:
        print(convert_into_cache(options))
    else:
        print(f"wrote {convert(fetch_hub_sources(options))}")
    return 0


if __name__ == "__main__":  # python -m rxt_convert.convert: as rxt-convert, errors as one line
    from rxt_convert.cli import convert as run_convert

    sys.exit(run_convert())
