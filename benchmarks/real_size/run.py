"""RxT at its real sizes, turn by turn, next to mlx-lm (issue 13, parts 3-5).

For each model (``rxt-alpha-mini``, ``rxt-beta-micro``, ``rxt-beta``; see make_checkpoints.py)
and precision (``fp32``, ``bf16``, ``8bit``, ``4bit``), one process of its own, under the
big-memory lock (``flock /tmp/rxt-bigmem.lock``), measures:

* **the turn**: load time (``rxt_mlx.load`` until every weight is evaluated), time to first
  token and decode tokens/s of one answer (``Session.generate``, a Q-token query, the answer
  forced to A tokens as rxt-bench does), the memory update (encoder + memory attention + the
  new STM's decoder projection), MLX's peak memory and the process's peak RSS;
* **the side by side**: an mlx-lm model of the decoder's dimensions with random weights in the
  same dtype and quantization, answering the same prompt with the same forced answer through
  mlx-lm's ``generate_step``: ``bailing_moe`` (softmax top-k with renormalised weights plus
  shared experts, first layer dense: the closest mlx-lm class to RxT-Beta's MoE) for the MoE
  models, the equal-shape ``llama`` of rxt-bench (``rxt_mlx/bench/baseline.py``) for
  Alpha-Mini; RxT and mlx-lm alternate ``--rounds`` times, medians reported;
* **where a decode step goes**: one step at position Q run piece by piece, each piece evaluated
  on its own (self-attention, memory cross-attention, router, routed experts, shared experts,
  dense FFN, head, the rest), medians over ``--steps`` steps, next to the compiled step;
* **where the memory update goes**: encoder, memory attention (the interlayer/self step and the
  main STM <- ED step, per layer kind) and the STM projection, each evaluated on its own; their
  sum is the reported memory update;
* **the bandwidth view**: the bytes one decode step reads (every weight it touches, the routed
  experts at top-k / E of their bytes, one embedding row; the memory cross-attention's key/value
  projections, used once per turn, are counted too: about 2% too many), the STM keys/values and the
  KV-cache buffer, this machine's measured read bandwidth (a large fp32 matrix-vector product through the
  BLAS MLX uses) and fp32 GEMM rate, the achieved fraction, and the bandwidth-bound tokens/s of
  Apple chips (a projection: bytes / bandwidth, nothing measured there).

A precision MLX cannot run here (bf16 MoE on the CPU: ``GatherMM`` supports float32 only) is
reported as not runnable with MLX's message. Folders come from ``--work`` (``mlx/<model>-<folder>``,
made by ``rxt-convert``, see CONVERT_FLAGS; missing ones are converted from the bf16 rxlm checkpoint, which
make_checkpoints.py writes).

Run from the repository root (takes about an hour on a 2-core machine):

    .venv/bin/python benchmarks/real_size/run.py [MODEL ...] [--precisions fp32 8bit ...]

Results: ``benchmarks/results/real-size/profile.{md,json,csv,png}``.
"""

# ruff: noqa: B023 - every timed lambda is called at once, inside its loop iteration

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "real-size"
LOCK = "/tmp/rxt-bigmem.lock"
BIN = Path(sys.executable).parent
MODELS = ("rxt-alpha-mini", "rxt-beta-micro", "rxt-beta")
PRECISIONS = ("fp32", "bf16", "8bit", "4bit")
CONVERT_FLAGS = {
    "fp32": ["--dtype", "float32"],
    "bf16": [],
    "8bit": ["-q", "--q-bits", "8", "--dtype", "float32"],
    "4bit": ["-q", "--dtype", "float32"],
}
"""rxt-convert flags per precision. The quantized folders keep fp32 activations (and fp32 scales): MLX's
CPU backend multiplies bf16 matrices without the BLAS (1.4 vs ~50 GFLOP/s here), which makes a
bf16-activation model's S x S memory attention take minutes."""
FOLDERS = {"fp32": "fp32", "bf16": "bf16", "8bit": "8bit-fp32", "4bit": "4bit-fp32"}
APPLE_GBPS = {"M1": 68, "M2 Pro": 200, "M3 Max": 400, "M4 Max": 546}
"""Memory bandwidth of Apple chips (GB/s, Apple's figures), for the bandwidth-bound projection."""
GOAL_RATIO = 0.9
"""RxT decode tok/s at turn 1 over mlx-lm's (issue 13)."""


# ---------------------------------------------------------------- child: one model, one precision


def _median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def _timed(function) -> float:
    import mlx.core as mx

    start = time.perf_counter()
    mx.eval(function())
    return time.perf_counter() - start


def mlx_lm_counterpart(model, shape_args: dict):
    """An mlx-lm model of the RxT decoder's dimensions, random weights, RxT's dtype and quantization."""
    import mlx.core as mx
    import mlx.nn as nn

    from rxt_mlx.bench.baseline import baseline_shape, build_baseline
    from rxt_mlx.config import FLOAT32_EPS

    decoder = model.config.decoder
    dtype = model.dtype
    if decoder.use_moe and decoder.num_shared_experts:
        from mlx_lm.models import bailing_moe

        attention = decoder.self_attention_shape("decoder_config")
        args = bailing_moe.ModelArgs(
            model_type="bailing_moe",
            hidden_size=decoder.embed_dim,
            intermediate_size=decoder.dense_layer_dim or decoder.ff_dim,
            max_position_embeddings=decoder.seq_len,
            moe_intermediate_size=decoder.ff_dim,
            num_experts=decoder.num_experts,
            num_shared_experts=decoder.num_shared_experts,
            moe_shared_expert_intermediate_size=decoder.shared_dim,
            norm_topk_prob=True,
            num_attention_heads=attention.query_heads,
            num_key_value_heads=attention.kv_heads,
            num_experts_per_tok=decoder.moe_top_k,
            num_hidden_layers=len(model.decoder.all_layers()),
            rms_norm_eps=FLOAT32_EPS,
            rope_theta=decoder.rope_base,
            vocab_size=decoder.vocab_size,
            first_k_dense_replace=(decoder.stateless_layers_config or []).count("dense"),
        )
        mx.random.seed(0)
        counterpart = bailing_moe.Model(args)
        counterpart.set_dtype(dtype)
        name = (
            f"mlx-lm bailing_moe ({args.num_hidden_layers} layers, {args.first_k_dense_replace} dense, "
            f"{args.num_experts} experts top-{args.num_experts_per_tok} of {args.moe_intermediate_size} + "
            f"{args.num_shared_experts} shared of {decoder.shared_dim}, {args.num_attention_heads}/"
            f"{args.num_key_value_heads} heads of {decoder.embed_dim // args.num_attention_heads})"
        )
    else:
        shape = baseline_shape(decoder)
        counterpart = build_baseline(shape, dtype=dtype)
        name = f"mlx-lm llama (rxt-bench baseline: {'; '.join(shape.notes)})"
    quantization = model.config.extra.get("quantization")
    if quantization:

        def predicate(path, module):
            if path.endswith(("gate.gate_proj", "mlp.gate")):
                return False  # routers stay in full precision, as RxT's do
            return hasattr(module, "to_quantized") and module.weight.shape[-1] % quantization["group_size"] == 0

        nn.quantize(counterpart, quantization["group_size"], quantization["bits"], class_predicate=predicate)
    mx.eval(counterpart.parameters())
    return counterpart, name


def decode_pieces(decoder, memory, cache, token, steps: int) -> dict[str, float]:
    """Median ms per decode step of each piece of the decoder, every piece evaluated on its own."""
    import mlx.core as mx

    from rxt_mlx.decoder import shared_positions
    from rxt_mlx.feedforward import MoE

    times: dict[str, list[float]] = {}

    def timed(name: str, function):
        start = time.perf_counter()
        value = function()
        mx.eval(value)
        times.setdefault(name, [0.0] * steps)[step] += time.perf_counter() - start
        return value

    layers = decoder.all_layers()
    for step in range(steps):  # noqa: B007 - timed() files each piece under this step
        offset = cache[0].offset
        stateful = iter(memory)
        x = timed("embedding, norms, residuals", lambda: decoder.embedding(token))
        positions = timed("embedding, norms, residuals", lambda: shared_positions(layers, offset, 1, x.dtype))
        for layer, layer_cache in zip(layers, cache, strict=True):
            normed = timed("embedding, norms, residuals", lambda: layer.norm1(x))
            attended = timed(
                "self-attention",
                lambda: layer.attention(normed, mask=None, cache=layer_cache, offset=positions),
            )
            x = timed("embedding, norms, residuals", lambda: x + attended)
            if "memory_cross_attention" in layer:
                kv = next(stateful)
                normed = timed("embedding, norms, residuals", lambda: layer.norm2(x))
                attended = timed(
                    "memory cross-attention",
                    lambda: layer.memory_cross_attention(normed, kv=kv, offset=positions),
                )
                x = timed("embedding, norms, residuals", lambda: x + attended)
            normed = timed("embedding, norms, residuals", lambda: layer.norm3(x))
            ff = layer.ff
            if isinstance(ff, MoE):
                weights, indices = timed("router", lambda: ff.router(normed))
                out = timed("routed experts", lambda: (ff.experts(normed, indices) * weights[..., None]).sum(axis=-2))
                if ff.num_shared:
                    shared = timed("shared experts", lambda: ff._shared(normed))
                    out = timed("embedding, norms, residuals", lambda: out + shared)
                if "global_bias" in ff:
                    out = timed("embedding, norms, residuals", lambda: out + ff.global_bias)
            else:
                out = timed("dense FFN", lambda: ff(normed))
            x = timed("embedding, norms, residuals", lambda: x + out)
        if "head_norm" in decoder:
            x = timed("embedding, norms, residuals", lambda: decoder.head_norm(x))
        timed("head", lambda: decoder.head(x))
    return {name: _median_ms(values) for name, values in times.items()}


def update_pieces(model, stm, ids) -> dict[str, float]:
    """Seconds of each piece of one memory update (each evaluated on its own); their sum is the update."""
    import mlx.core as mx

    memory_attention = model.memory_attention
    seconds: dict[str, float] = {}

    def timed(name: str, function):
        start = time.perf_counter()
        value = function()
        mx.eval(value)
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
        return value

    hidden = timed("encoder", lambda: model.encoder(ids))
    stm = stm.astype(hidden.dtype)
    variant = memory_attention.variant
    if variant in ("self-interlayer", "grouped-self-interlayer", "interlayer"):
        means = timed("memory attention: layer means", lambda: memory_attention._layer_means(stm))
        group_size = stm.shape[0] // memory_attention.num_groups
        inputs = []
        for index, old in enumerate(stm):
            mean = means[index // group_size]
            normed = timed(
                "memory attention: norms and gates", lambda: memory_attention.mean_memory_norm_layers[index](old)
            )
            keys = (
                mean
                if variant == "interlayer"
                else timed(
                    "memory attention: norms and gates",
                    lambda: memory_attention.interlayer_gate_layers[index](normed, mean),
                )
            )
            attended = timed(
                "memory attention: interlayer attention (S x S)",
                lambda: memory_attention.mean_attention_layers[index](normed, keys),
            )
            inputs.append(
                timed(
                    "memory attention: norms and gates",
                    lambda: memory_attention.mean_residual_gate_layers[index](old, attended),
                )
            )
    else:
        inputs = timed("memory attention: pre-main step", lambda: memory_attention._pre_main(stm))
    updated = []
    for index, layer_input in enumerate(inputs):
        queries = timed(
            "memory attention: norms and gates", lambda: memory_attention.memory_norm_layers[index](layer_input)
        )
        encoded = timed(
            "memory attention: norms and gates", lambda: memory_attention.memory_input_norm_layers[index](hidden[index])
        )
        attended = timed(
            "memory attention: main attention (S x T)",
            lambda: memory_attention.attention_layers[index](queries, encoded),
        )
        updated.append(
            timed(
                "memory attention: norms and gates",
                lambda: memory_attention.residual_gate_layers[index](layer_input, attended),
            )
        )
    new_stm = timed("memory attention: norms and gates", lambda: mx.stack(updated))
    timed("STM projection (decoder keys/values)", lambda: model.decoder.project_memory(new_stm))
    return seconds


def step_bytes(model, context: int) -> dict[str, int]:
    """Bytes one decode step reads at ``context`` filled positions, by kind (see the module docstring)."""
    from mlx.utils import tree_flatten

    decoder = model.decoder
    config = decoder.config
    itemsize = model.dtype.size
    weights = experts = embedding = 0
    for name, value in tree_flatten(decoder.parameters()):
        if name.startswith("embedding."):
            embedding += value.nbytes // value.shape[0]  # one row (weight, or scales/biases)
        elif ".ff.experts." in name:
            experts += value.nbytes * config.moe_top_k // config.num_experts
        else:
            weights += value.nbytes
    attention = config.cross_attention_shape()
    stm_kv = config.num_layers * 2 * config.stm_size * attention.kv_heads * attention.head_dim * itemsize
    self_shape = config.self_attention_shape()
    layers = len(decoder.all_layers())
    capacity = -(-(context + 1) // 64) * 64  # the one-token call reads the whole cache buffer
    kv_cache = layers * 2 * capacity * self_shape.kv_heads * self_shape.head_dim * itemsize
    return {
        "dense_weights": weights,
        "active_experts": experts,
        "embedding_row": embedding,
        "stm_keys_values": stm_kv,
        "kv_cache": kv_cache,
        "total": weights + experts + embedding + stm_kv + kv_cache,
    }


def child_profile(folder: str, query_tokens: int, answer_tokens: int, rounds: int, steps: int) -> dict:
    import mlx.core as mx

    import rxt_mlx
    from rxt_mlx.bench.baseline import StatelessChat
    from rxt_mlx.bench.systems import RxTChat, build_script, measure

    start = time.perf_counter()
    model, tokenizer = rxt_mlx.load(folder)
    mx.eval(model.parameters())
    record = {"load_seconds": time.perf_counter() - start, "dtype": str(model.dtype)}
    script = build_script(tokenizer, 1, query_tokens, answer_tokens, model.config.decoder.vocab_size, seed=0)
    try:
        chat = RxTChat(model, tokenizer, script, seed=0)  # warms up the compiled one-token step
        chat.turn(0, commit=False)  # compiles the one-token step; builds MLX's CPU kernels
    except (RuntimeError, ValueError) as error:
        return {**record, "runnable": False, "error": str(error).splitlines()[0]}
    mx.reset_peak_memory()
    counterpart, counterpart_name = mlx_lm_counterpart(model, {})
    stateless = StatelessChat(counterpart, keep_cache=False)
    query, answer = script.query_ids[0], script.answer_ids[0]
    list(stateless.answer(query, answer, commit=False))
    rxt_timings, mlx_lm_timings = [], []
    for _ in range(rounds):
        rxt_timings.append(chat.turn(0, commit=False))
        mlx_lm_timings.append(measure(stateless.answer(query, answer, commit=False)))
    record.update(
        runnable=True,
        query_tokens=len(query),
        answer_tokens=len(answer),
        ttft_ms=statistics.median(t.ttft_seconds for t in rxt_timings) * 1000,
        decode_tokens_per_second=statistics.median(t.decode_tokens_per_second for t in rxt_timings),
        mlx_lm_model=counterpart_name,
        mlx_lm_ttft_ms=statistics.median(t.ttft_seconds for t in mlx_lm_timings) * 1000,
        mlx_lm_decode_tokens_per_second=statistics.median(t.decode_tokens_per_second for t in mlx_lm_timings),
        rxt_rounds_tokens_per_second=[t.decode_tokens_per_second for t in rxt_timings],
        mlx_lm_rounds_tokens_per_second=[t.decode_tokens_per_second for t in mlx_lm_timings],
    )
    record["decode_ratio_to_mlx_lm"] = record["decode_tokens_per_second"] / record["mlx_lm_decode_tokens_per_second"]
    del counterpart, stateless

    decoder = model.decoder
    stm = chat.session.stm
    memory = decoder.project_memory(stm)
    cache = decoder.make_cache()
    mx.eval(decoder(mx.array([query]), cache=cache, memory=memory))
    token = mx.array([[answer[0]]])
    compiled = []
    for _ in range(steps):
        compiled.append(_timed(lambda: decoder(token, cache=cache, memory=memory)))
    record["compiled_step_ms"] = _median_ms(compiled)
    cache = decoder.make_cache()
    mx.eval(decoder(mx.array([query]), cache=cache, memory=memory))
    record["decode_step_pieces_ms"] = decode_pieces(decoder, memory, cache, token, steps)
    record["step_bytes"] = step_bytes(model, len(query))

    interaction = mx.array([query + answer + [tokenizer.eos_id]])
    pieces = update_pieces(model, stm, interaction)
    record["memory_update_pieces_seconds"] = pieces
    record["memory_update_seconds"] = sum(pieces.values())
    record["memory_update_flops"] = update_flops(model, interaction.shape[1])
    record["memory_update_exps"] = update_exps(model, interaction.shape[1])
    record["mlx_peak_memory_bytes"] = mx.get_peak_memory()
    return record


def update_flops(model, tokens: int) -> int:
    """Matrix-product FLOPs (2 per multiply-add) of one memory update of ``tokens`` tokens, STM projection included."""
    config = model.config
    encoder, attention = config.encoder, config.memory_attention
    layers, slots, dim = config.stm_shape

    def attention_flops(shape, queries: int, keys: int, gated: bool = False) -> int:
        width = shape.head_dim
        projections = queries * dim * shape.query_heads * width + 2 * keys * dim * shape.kv_heads * width
        projections += queries * shape.out_heads * width * dim * (2 if gated else 1)
        scores_and_values = 2 * queries * keys * shape.out_heads * width
        return 2 * (projections + scores_and_values)

    self_shape = encoder.self_attention_shape()
    ff = 3 * dim * encoder.ff_dim if encoder.use_gated else 2 * dim * encoder.ff_dim
    flops = encoder.num_layers * (
        attention_flops(self_shape, tokens, tokens, encoder.use_gated_attention) + 2 * tokens * ff
    )
    main = attention.main_attention_shape()
    flops += layers * attention_flops(main, slots, tokens)
    slot_attention = slot_attention_shape(config)
    if slot_attention is not None:
        flops += layers * attention_flops(slot_attention, slots, slots)
    cross = config.decoder.cross_attention_shape()
    flops += layers * 2 * 2 * slots * dim * cross.kv_heads * cross.head_dim
    return flops


def update_exps(model, tokens: int) -> int:
    """Softmax elements (one ``exp`` each) of one memory update of ``tokens`` tokens: the encoder's
    self-attention, the main attention (STM slots x tokens) and the interlayer/self attention
    (slots x slots). MLX's CPU backend computes ``exp`` one element at a time on one core (no
    SIMD on x86 Linux), so at RxT-Beta's 4096 slots these, not the FLOPs, set the update's time."""
    config = model.config
    encoder, attention = config.encoder, config.memory_attention
    layers, slots, _ = config.stm_shape
    exps = encoder.num_layers * tokens * tokens * encoder.self_attention_shape().out_heads
    exps += layers * slots * tokens * attention.main_attention_shape().out_heads
    slot_attention = slot_attention_shape(config)
    if slot_attention is not None:
        exps += layers * slots * slots * slot_attention.out_heads
    return exps


def slot_attention_shape(config):
    """The shape of the memory attention's slots x slots step (interlayer or self), None for ``simple``."""
    from rxt_mlx.memory_attention import INTERLAYER_VARIANTS

    if config.memory_attention_variant in INTERLAYER_VARIANTS:
        return config.memory_attention.interlayer_attention_shape()
    if config.memory_attention_variant == "self":
        return config.memory_attention.self_attention_shape()
    return None


def child_machine() -> dict:
    """This machine's fp32 GEMM rate (GFLOP/s) and read bandwidth (GB/s, fp32 matrix-vector product)."""
    import mlx.core as mx

    from rxt_mlx.bench.machine import machine_info

    size = 2048
    a, b = mx.random.normal((size, size)), mx.random.normal((size, size))
    mx.eval(a, b)
    gemm = min(_timed(lambda: a @ b) for _ in range(5))
    rows, cols = 8192, 16384  # 512 MiB, far above any cache
    matrix, vector = mx.random.normal((rows, cols)), mx.random.normal((cols,))
    mx.eval(matrix, vector)
    gemv = min(_timed(lambda: matrix @ vector) for _ in range(5))
    scores = mx.random.normal((1 << 24,))  # 64 MiB: exp's own speed, not the memory's
    mx.eval(scores)
    exp = min(_timed(lambda: mx.exp(scores)) for _ in range(5))
    return {
        "fp32_gemm_gflops": 2 * size**3 / gemm / 1e9,
        "read_bandwidth_gbps": matrix.nbytes / gemv / 1e9,
        "exp_ns_per_element": exp / scores.size * 1e9,
        "machine": machine_info(),
    }


def child(argv: list[str]) -> None:
    from rxt_mlx.blas import preload_optimised_blas

    preload_optimised_blas()
    mode, *rest = argv
    if mode == "machine":
        print(json.dumps(child_machine()))
    else:
        folder, query_tokens, answer_tokens, rounds, steps = rest
        print(json.dumps(child_profile(folder, int(query_tokens), int(answer_tokens), int(rounds), int(steps))))


# ---------------------------------------------------------------- parent


def locked(command: list[str]) -> tuple[dict, int]:
    """Run ``command`` under the big-memory lock; its last stdout line as JSON, and its peak RSS (bytes)."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as timing:
        result = subprocess.run(
            ["flock", LOCK, "/usr/bin/time", "-o", timing.name, "-f", "%M", *command], capture_output=True, text=True
        )
        if result.returncode:
            raise SystemExit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
        peak = int(timing.read().split("\n")[-2]) * 1024
    return json.loads(result.stdout.strip().splitlines()[-1]), peak


def ensure_folder(work: Path, model: str, precision: str) -> Path:
    folder = work / "mlx" / f"{model}-{FOLDERS[precision]}"
    if not (folder / "config.json").is_file():
        checkpoint = work / f"{model}-bf16"
        if not (checkpoint / "config.json").is_file():
            subprocess.run(
                ["flock", LOCK, str(BIN / "python"), str(HERE / "make_checkpoints.py"), model, "--out", str(work)],
                check=True,
            )
        subprocess.run(
            [
                "flock",
                LOCK,
                str(BIN / "rxt-convert"),
                str(checkpoint),
                str(folder),
                "--no-progress",
                *CONVERT_FLAGS[precision],
            ],
            check=True,
        )
    return folder


def bandwidth_view(record: dict, machine: dict) -> dict:
    total = record["step_bytes"]["total"]
    bound = machine["read_bandwidth_gbps"] * 1e9 / total
    return {
        "bytes_per_step": total,
        "bandwidth_bound_tokens_per_second": bound,
        "achieved_fraction": record["decode_tokens_per_second"] / bound,
        "compiled_step_fraction": 1000 / record["compiled_step_ms"] / bound,
        "projected_tokens_per_second": {chip: gbps * 1e9 / total for chip, gbps in APPLE_GBPS.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", metavar="MODEL", help=f"any of {', '.join(MODELS)} (default: all)")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--work", type=Path, default=Path("/tmp/rxt-real-size"), help="checkpoints and MLX folders")
    parser.add_argument("--query-tokens", type=int, default=32)
    parser.add_argument("--answer-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="alternating RxT / mlx-lm answers (medians)")
    parser.add_argument("--steps", type=int, default=5, help="decode steps of the breakdown (medians)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return 0
    python = str(BIN / "python")
    machine, _ = locked([python, __file__, "--child", "machine"])
    print(
        f"fp32 GEMM {machine['fp32_gemm_gflops']:.1f} GFLOP/s, "
        f"read bandwidth {machine['read_bandwidth_gbps']:.2f} GB/s, MLX exp {machine['exp_ns_per_element']:.1f} ns",
        flush=True,
    )
    records = []
    for model in args.models or MODELS:
        for precision in args.precisions:
            folder = ensure_folder(args.work, model, precision)
            command = [python, __file__, "--child", "profile", str(folder)]
            command += [str(args.query_tokens), str(args.answer_tokens), str(args.rounds), str(args.steps)]
            record, peak_rss = locked(command)
            record.update(model=model, precision=precision, peak_rss_bytes=peak_rss)
            if record["runnable"]:
                record["bandwidth"] = bandwidth_view(record, machine)
            records.append(record)
            print(summary_line(record), flush=True)
            write_results(args.out, machine, records)  # partial results survive a stopped run
    return 0


def summary_line(record: dict) -> str:
    if not record["runnable"]:
        return f"{record['model']:>15} {record['precision']:>5}: not runnable here ({record['error']})"
    return (
        f"{record['model']:>15} {record['precision']:>5}: load {record['load_seconds']:.1f} s, "
        f"TTFT {record['ttft_ms']:.0f} ms, {record['decode_tokens_per_second']:.2f} tok/s "
        f"(mlx-lm {record['mlx_lm_decode_tokens_per_second']:.2f}, {record['decode_ratio_to_mlx_lm']:.2f}x), "
        f"update {record['memory_update_seconds']:.1f} s, peak RSS {record['peak_rss_bytes'] / 1e9:.2f} GB"
    )


# ---------------------------------------------------------------- results


def write_results(out: Path, machine: dict, records: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.json").write_text(json.dumps({"machine": machine, "records": records}, indent=2) + "\n")
    columns = [
        "model", "precision", "runnable", "load_seconds", "ttft_ms", "decode_tokens_per_second",
        "mlx_lm_decode_tokens_per_second", "decode_ratio_to_mlx_lm", "memory_update_seconds",
        "mlx_peak_memory_bytes", "peak_rss_bytes",
    ]  # fmt: skip
    with open(out / "profile.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
    (out / "profile.md").write_text(tables(machine, records))
    plot(out / "profile.png", records)


def tables(machine: dict, records: list[dict]) -> str:
    info = machine["machine"]
    runnable = [record for record in records if record["runnable"]]
    lines = [
        "# RxT at its real sizes: the turn, mlx-lm side by side, where the time goes",
        "",
        f"Machine: {info.get('cpu', info.get('chip', '?'))}, {info.get('cores', '?')} cores (shared with other jobs), "
        f"MLX {info.get('mlx_version', '?')} CPU, BLAS {info.get('blas', '?')}. "
        f"Measured fp32 GEMM rate {machine['fp32_gemm_gflops']:.1f} GFLOP/s (2048^3), read bandwidth "
        f"{machine['read_bandwidth_gbps']:.2f} GB/s (fp32 matrix-vector product over 512 MiB), MLX's CPU `exp` "
        f"{machine.get('exp_ns_per_element', float('nan')):.1f} ns per element (2^24 elements). "
        "Command: `.venv/bin/python benchmarks/real_size/run.py`. Random weights; one turn, answers forced.",
        "",
        "## The turn",
        "",
        "| model | precision | load (s) | TTFT (ms) | decode tok/s | mlx-lm tok/s | RxT / mlx-lm | "
        "memory update (s) | MLX peak (GB) | peak RSS (GB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for record in records:
        if not record["runnable"]:
            lines.append(
                f"| {record['model']} | {record['precision']} | not runnable here: `{record['error']}` ||||||||"
            )
            continue
        verdict = "met" if record["decode_ratio_to_mlx_lm"] >= GOAL_RATIO else "missed"
        lines.append(
            f"| {record['model']} | {record['precision']} | {record['load_seconds']:.1f} | {record['ttft_ms']:.0f} | "
            f"{record['decode_tokens_per_second']:.2f} | {record['mlx_lm_decode_tokens_per_second']:.2f} | "
            f"{record['decode_ratio_to_mlx_lm']:.2f}x ({verdict}) | {record['memory_update_seconds']:.1f} | "
            f"{record['mlx_peak_memory_bytes'] / 1e9:.2f} | {record['peak_rss_bytes'] / 1e9:.2f} |"
        )
    models = sorted({record["mlx_lm_model"] for record in runnable})
    lines += ["", f"Goal: RxT decode tok/s ≥ {GOAL_RATIO}x mlx-lm's at turn 1. mlx-lm counterparts:", ""]
    lines += [f"* {name}" for name in models]
    pieces = sorted({name for record in runnable for name in record["decode_step_pieces_ms"]})
    lines += [
        "",
        "## One decode step by component (ms; each piece evaluated on its own, so the sum exceeds the compiled step)",
        "",
        "| model | precision | compiled step | " + " | ".join(pieces) + " |",
        "|---|---|---:|" + "---:|" * len(pieces),
    ]
    for record in runnable:
        values = [f"{record['decode_step_pieces_ms'].get(name, 0.0):.1f}" for name in pieces]
        lines.append(
            f"| {record['model']} | {record['precision']} | {record['compiled_step_ms']:.1f} | "
            + " | ".join(values)
            + " |"
        )
    pieces = sorted({name for record in runnable for name in record["memory_update_pieces_seconds"]})
    lines += [
        "",
        "## One memory update by component (s)",
        "",
        "FLOP time: the matrix products at the measured GEMM rate. Exp time: the softmax elements at "
        "MLX's measured `exp` rate (single-threaded and scalar on this CPU). Their sum is the floor the "
        "update cannot beat on this backend.",
        "",
        "| model | precision | total | FLOPs (G) | at the GEMM rate (s) | total / FLOP time | softmax exps (G) | "
        "at MLX's exp rate (s) | total / (FLOP + exp time) | " + " | ".join(pieces) + " |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(pieces),
    ]
    for record in runnable:
        flop_seconds = record["memory_update_flops"] / (machine["fp32_gemm_gflops"] * 1e9)
        exps = record.get("memory_update_exps", 0)
        exp_seconds = exps * machine.get("exp_ns_per_element", float("nan")) / 1e9
        values = [f"{record['memory_update_pieces_seconds'].get(name, 0.0):.2f}" for name in pieces]
        lines.append(
            f"| {record['model']} | {record['precision']} | {record['memory_update_seconds']:.1f} | "
            f"{record['memory_update_flops'] / 1e9:.0f} | {flop_seconds:.2f} | "
            f"{record['memory_update_seconds'] / flop_seconds:.1f}x | {exps / 1e9:.2f} | {exp_seconds:.2f} | "
            f"{record['memory_update_seconds'] / (flop_seconds + exp_seconds):.1f}x | " + " | ".join(values) + " |"
        )
    chips = list(APPLE_GBPS)
    lines += [
        "",
        "## Bandwidth view",
        "",
        "Bytes one decode step reads: every decoder weight it touches (routed experts at top-k / E of "
        "their bytes, one embedding row), the STM keys/values of every stateful layer and the KV-cache "
        "buffer. Bound = bandwidth / bytes. The Apple columns are a **projection** (bytes / the chip's "
        "bandwidth), not a measurement: real decode reaches some fraction of it.",
        "",
        "| model | precision | MB per step | of which STM K/V (MB) | bound here (tok/s) | achieved tok/s | fraction | "
        "compiled step fraction | " + " | ".join(f"{chip} ({APPLE_GBPS[chip]} GB/s) bound" for chip in chips) + " |",
        "|---|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(chips),
    ]
    for record in runnable:
        view = record["bandwidth"]
        projected = [f"{view['projected_tokens_per_second'][chip]:.0f}" for chip in chips]
        lines.append(
            f"| {record['model']} | {record['precision']} | {view['bytes_per_step'] / 1e6:.0f} | "
            f"{record['step_bytes']['stm_keys_values'] / 1e6:.0f} | {view['bandwidth_bound_tokens_per_second']:.1f} | "
            f"{record['decode_tokens_per_second']:.2f} | {view['achieved_fraction']:.0%} | "
            f"{view['compiled_step_fraction']:.0%} | " + " | ".join(projected) + " |"
        )
    return "\n".join(lines) + "\n"


def plot(path: Path, records: list[dict]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    runnable = [record for record in records if record["runnable"]]
    labels = [f"{record['model'].removeprefix('rxt-')}\n{record['precision']}" for record in runnable]
    positions = range(len(runnable))
    figure, (speed, update) = plt.subplots(1, 2, figsize=(12, 4.5))
    speed.bar([p - 0.2 for p in positions], [r["decode_tokens_per_second"] for r in runnable], 0.4, label="RxT")
    speed.bar(
        [p + 0.2 for p in positions], [r["mlx_lm_decode_tokens_per_second"] for r in runnable], 0.4, label="mlx-lm"
    )
    speed.set_yscale("log")
    speed.set_ylabel("decode tokens/s (turn 1)")
    speed.set_xticks(list(positions), labels, fontsize=8)
    speed.legend()
    update.bar(list(positions), [r["memory_update_seconds"] for r in runnable])
    update.set_yscale("log")
    update.set_ylabel("memory update (s)")
    update.set_xticks(list(positions), labels, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
