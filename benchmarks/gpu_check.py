"""One-GPU acceptance check of the trainer, sized to finish in under 8 minutes on one H100/H200.

Sections, in this order (each one's rows reach the report as soon as it ends, so a run cut short by
the time limit still returns what it measured; a section that fails becomes a FAILED row):

0. what this machine cannot run (Transformer Engine layer specs, FP8, THD attention through TE,
   SGLang): rows saying "not available on this machine", never dropped;
1. the card's bf16 matrix-multiply rate, measured here (the MFU denominator besides the datasheet's);
2. Qwen3 text, a random Qwen3-0.6B-shaped model (28 layers, hidden 1024, vocab 151,936) built
   through our own ``build_policy``: log-prob parity of the trainer in fp32 and bf16 against the HF
   model in float64 on CPU; one PPO step (``PolicyTrainer.ppo_step``) at 2k and 4k tokens, and at 8k
   with selective recompute (the local spec's attention keeps B x heads x S x S scores otherwise);
   tokens/s and MFU; one bucketed weight export into an in-process HF model; FP8 where TE allows;
3. chunked log-probs at Qwen3.5's 248,320-token vocabulary: peak memory of forward + backward,
   chunked vs one chunk (gpu_check_memory.py);
4. Qwen3.5 text (hybrid Gated DeltaNet + gated attention, GDN through Megatron's torch path when
   FLA is absent): parity and a PPO step (gpu_check_qwen35.py);
5. Qwen3.5-VL: parity with images and a PPO step on rows with images (gpu_check_vl.py);
6. sequence packing, when benchmarks/gpu_check_packing.py is in the tree (its ``packing_rows``).

Sections 2-6 are named qwen3, memory, qwen35, vl and packing for ``--sections`` (a rerun of what a
short lease did not reach). ``--cpu-smoke`` runs the same code on tiny models on CPU in well under a
minute (what CI runs, and the rehearsal of the lent machine's install, tools/gpu_rehearsal.sh).

MFU = achieved model FLOP/s / peak dense FLOP/s. Model FLOPs per token (PaLM's convention):
6 x (parameters in matmuls, embedding lookup excluded) + 12 x layers x attention width x sequence
length; recomputation is not counted. Peaks: the bf16 rate measured in this run, and the datasheet's
(NVIDIA, dense, SXM: H100 and H200 989 TFLOP/s bf16, 1979 FP8); other cards need --peak-tflops.
"""

from __future__ import annotations

from collections.abc import Iterator

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))  # the gpu_check_*.py section modules

from gpu_check_report import (  # noqa: E402
    NOT_AVAILABLE,
    Report,
    device_here,
    fp8_available,
    measure_matmul_tflops,
    mfu_text,
    peak_tflops,
    sync,
    train_kind,
    unavailable_rows,
    versions,
)

from megatron_zppo.toy.shapes import QWEN3  # noqa: E402

QWEN3_06B = dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=8192,
                 tie_word_embeddings=False)
TINY = dict(QWEN3, vocab_size=320, max_position_embeddings=256, tie_word_embeddings=False)  # the --cpu-smoke model
PROMPT = 128  # prompt tokens of every timed row; the rest is response (what the loss covers)
SECTIONS = ("qwen3", "memory", "qwen35", "vl", "packing")  # --sections names, in running order


def save_random_model(out_dir: str, shape: dict, dtype: torch.dtype, seed: int = 0) -> str:
    """A random Qwen3 HF checkpoint + a small offline tokenizer (HFEngine needs a pad token)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from megatron_zppo.toy.models import build_tokenizer

    build_tokenizer(out_dir, ["0123456789 the quick brown fox"], vocab_size=300)
    torch.manual_seed(seed)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # random init on GPU is seconds
        model = Qwen3ForCausalLM(Qwen3Config(**shape)).to(dtype)
    model.save_pretrained(out_dir)
    return out_dir


def build(hf_dir: str, dtype: str, fp8: str = "none", train: bool = False, recompute: str = "none"):
    """(policy, trainer or None) through our build path; FP8 fields set as precision.py maps them."""
    from megatron_zppo.train import model as model_mod
    from megatron_zppo.train.precision import PrecisionConfig, ddp_config_fields, transformer_config_fields
    from megatron_zppo.train.optimizer import OptimizerConfig, build_optimizer, ddp_config
    from megatron_zppo.train.steps import PolicyTrainer

    precision = PrecisionConfig(dtype, fp8)
    opt = OptimizerConfig(lr=1e-6)
    if fp8 == "none":
        cfg = model_mod.ModelConfig(hf_dir, precision.torch_dtype_name, recompute=recompute)
        policy = model_mod.build_policy(cfg, _parallel(), ddp_config(opt) if train else None)
    else:
        # model.py does not take a precision yet (see precision.py's wiring note): mirror build_policy
        # here with the FP8 fields applied to the provider before the model is built.
        from megatron.bridge import AutoBridge

        bridge = AutoBridge.from_hf_pretrained(hf_dir, dtype=torch.bfloat16)
        provider = model_mod._provider(model_mod.ModelConfig(hf_dir, "bfloat16"), _parallel(), bridge)
        for key, value in transformer_config_fields(precision).items():
            setattr(provider, key, value)
        ddp = ddp_config(opt)
        for key, value in ddp_config_fields(precision).items():
            setattr(ddp, key, value)
        chunks = provider.provide_distributed_model(ddp_config=ddp, wrap_with_ddp=True, bf16=True, fp16=False)
        policy = model_mod.Policy(bridge, chunks, int(bridge.hf_pretrained.config.vocab_size))
    trainer = PolicyTrainer(policy, *build_optimizer(policy, opt), with_entropy=False) if train else None
    return policy, trainer


def _parallel():
    from megatron_zppo.train.parallel import ParallelConfig

    return ParallelConfig()


def parity_batch(vocab: int, seed: int = 1):
    """Two rows of different prompt/response lengths (right padding must not leak)."""
    from megatron_zppo.train.logprobs import SequenceBatch

    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, vocab, (n,), generator=g).tolist() for n in (12, 7)]
    responses = [torch.randint(0, vocab, (n,), generator=g).tolist() for n in (20, 9)]
    return SequenceBatch.from_lists(prompts, responses)


@torch.no_grad()
def trainer_logprobs(policy, batch) -> torch.Tensor:
    from megatron_zppo.train.logprobs import LogprobRequest, forward_response_logprobs

    for chunk in policy.chunks:
        chunk.eval()
    out = forward_response_logprobs(policy.chunks[0], LogprobRequest(batch.to(device_here()), policy.vocab_size))
    return out[0].double().cpu() * batch.response_mask()


@torch.no_grad()
def reference_logprobs(hf_dir: str, batch) -> torch.Tensor:
    """float64 on CPU: the ground truth both trainer dtypes are measured against."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float64).eval()
    out = torch.zeros(batch.response_mask().shape, dtype=torch.float64)
    for i in range(batch.tokens.shape[0]):
        p, r = int(batch.prompt_lens[i]), int(batch.response_lens[i])
        ids = batch.tokens[i: i + 1, : p + r]
        logp = model(input_ids=ids).logits[0, p - 1: p + r - 1].log_softmax(-1)
        out[i, :r] = logp.gather(-1, ids[0, p: p + r, None])[:, 0]
    return out


def matmul_params(shape: dict) -> int:
    h, f, L = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    q, kv = shape["num_attention_heads"] * shape["head_dim"], shape["num_key_value_heads"] * shape["head_dim"]
    return L * (h * (q + 2 * kv) + q * h + 3 * h * f) + h * shape["vocab_size"]  # + output layer


def flops_per_token(shape: dict, seq_len: int) -> float:
    attn_width = shape["num_attention_heads"] * shape["head_dim"]
    return 6.0 * matmul_params(shape) + 12.0 * shape["num_hidden_layers"] * attn_width * seq_len


def time_ppo_step(trainer, vocab: int, seq_len: int, warmup: int, steps: int) -> float:
    """Median seconds of one PPO update on one row of ``seq_len`` tokens."""
    from megatron_zppo.train.logprobs import SequenceBatch
    from megatron_zppo.train.steps import PPOMicroBatch

    prompt = min(PROMPT, seq_len // 4)
    g = torch.Generator().manual_seed(seq_len)
    seq = SequenceBatch(torch.randint(0, vocab, (1, seq_len), generator=g), torch.tensor([prompt]),
                        torch.tensor([seq_len - prompt]), seq_len - prompt)
    return time_steps(trainer, [PPOMicroBatch(seq, torch.full((1, seq_len - prompt), -3.0), torch.ones(1))],
                      warmup, steps)


def time_steps(trainer, micro_batches, warmup: int, steps: int) -> float:
    """Median seconds of one PPO update on ``micro_batches``, after ``warmup`` untimed ones."""
    from megatron_zppo.core.loss import LossConfig

    for chunk in trainer.policy.chunks:
        chunk.train()
    times = []
    for i in range(warmup + steps):
        sync()
        t0 = time.perf_counter()
        trainer.ppo_step(micro_batches, LossConfig())
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_weight_export(policy, hf_dir: str) -> tuple[float, float]:
    """(seconds, GB) for export_hf_weights -> HFEngine.update_weights of the whole model."""
    from megatron_zppo.rollout.hf_engine import HFEngine
    from megatron_zppo.train.model import export_hf_weights

    engine = HFEngine(hf_dir, dtype=torch.bfloat16 if _is_bf16(policy) else torch.float32)
    sizes = []

    def stream():
        for bucket in export_hf_weights(policy):
            for name, tensor in bucket:
                sizes.append(tensor.numel() * tensor.element_size())
                yield name, tensor

    sync()
    t0 = time.perf_counter()
    engine.update_weights(stream(), "gpu-check")
    seconds = time.perf_counter() - t0
    assert engine.weight_version == "gpu-check"
    return seconds, sum(sizes) / 1e9


def _is_bf16(policy) -> bool:
    from megatron.core.utils import get_model_config

    return bool(get_model_config(policy.chunks[0]).bf16)


def qwen3_rows(args, peaks: dict) -> Iterator[str]:
    """Parity, PPO throughput at each length, weight export (and FP8 where TE allows)."""
    from megatron_zppo.train.model import _use_local_spec

    smoke = args.cpu_smoke
    shape = TINY if smoke else QWEN3_06B
    lengths = [32, 64] if smoke else [2048, 4096]
    long = 128 if smoke else 8192  # with selective recompute: see the docstring
    spec = "local (torch) layer spec" if _use_local_spec("auto") else "Transformer Engine layer spec"
    yield (f"| model | random Qwen3, {matmul_params(shape) / 1e6:,.1f} M matmul parameters, {spec} | "
           f"{shape['num_hidden_layers']} layers, hidden {shape['hidden_size']}, vocab {shape['vocab_size']:,} |")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        hf_dir = save_random_model(tmp, shape, torch.float32 if smoke else torch.bfloat16)
        yield f"| setup | random checkpoint written | {time.perf_counter() - t0:.1f} s |"
        batch = parity_batch(shape["vocab_size"])
        ref = reference_logprobs(hf_dir, batch)
        fp32, _ = build(hf_dir, "fp32")
        diff = (trainer_logprobs(fp32, batch) - ref).abs().max().item()
        yield f"| log-prob parity | fp32 trainer vs float64 CPU | max abs diff {diff:.2e} |"
        yield softmax_row(fp32)
        del fp32
        kind = train_kind()[0]
        policy, trainer = build(hf_dir, kind, train=True)
        yield parity_row("log-prob parity", "bf16 trainer vs float64 CPU", policy, batch, ref)
        yield from throughput_rows(trainer, shape, lengths, kind, peaks, args)
        seconds, gb = time_weight_export(policy, hf_dir)
        yield (f"| weight sync | export_hf_weights -> HFEngine.update_weights | {seconds:.2f} s for "
                    f"{gb:.3f} GB ({gb / max(seconds, 1e-9):.2f} GB/s) |")
        del policy, trainer
        _, trainer = build(hf_dir, kind, train=True, recompute="selective")
        yield from throughput_rows(trainer, shape, [long], kind, peaks, args, note=", selective recompute")
        del trainer
        if not smoke and fp8_available()[0]:
            _, fp8_trainer = build(hf_dir, "bf16", fp8="tensorwise", train=True)
            yield from throughput_rows(fp8_trainer, shape, lengths, "fp8", peaks, args)


def parity_row(check: str, setting: str, policy, batch, ref) -> str:
    """The bf16 parity row: measured where the trainer runs in bf16, else why it cannot (CPU)."""
    kind, why = train_kind()
    if kind != "bf16":
        return f"| {check} | {setting} | {NOT_AVAILABLE} ({why}) |"
    return f"| {check} | {setting} | max abs diff {(trainer_logprobs(policy, batch) - ref).abs().max().item():.2e} |"


def softmax_row(policy) -> str:
    """Which softmax the local attention takes: Apex's fused kernel, or torch's where it is absent."""
    from megatron.core.utils import get_model_config

    fused = get_model_config(policy.chunks[0]).masked_softmax_fusion
    return (f"| attention softmax | local spec, bf16 inputs | {'fused (Apex kernels)' if fused else 'torch'} "
            f"(masked_softmax_fusion={fused}) |")


def throughput_rows(trainer, shape, lengths, kind: str, peaks: dict, args, note: str = "") -> Iterator[str]:
    for seq in lengths:
        seconds = time_ppo_step(trainer, shape["vocab_size"], seq, args.warmup, args.steps)
        tps = seq / seconds
        yield (f"| throughput | {kind} PPO step, 1 x {seq} tokens{note} | {tps:,.0f} tokens/s "
               f"({seconds * 1e3:.1f} ms){mfu_text(tps * flops_per_token(shape, seq), kind, peaks)} |")


def packing_rows(args) -> Iterator[str]:
    """The packing section: benchmarks/gpu_check_packing.py's rows (THD vs padded parity, packed vs padded
    PPO tokens/s). That module reports its own failure as a row; here it also fails the section."""
    if not (Path(__file__).parent / "gpu_check_packing.py").exists():
        yield "| sequence packing | packed vs padded PPO step | not run: benchmarks/gpu_check_packing.py is not in this tree |"
        return
    from gpu_check_packing import packing_rows as rows

    failed = False
    for row in rows(build, time_steps, args.cpu_smoke, args.warmup, args.steps):
        failed = failed or row.startswith("| packing | failed |") or "(MISMATCH)" in row
        yield row
    if failed:
        raise RuntimeError("the packing rows above report a failure")


def run(args, report: Report) -> None:
    """Every section in order; rows go to ``report`` as each ends."""
    from gpu_check_memory import chunked_logprob_memory_rows
    from gpu_check_qwen35 import qwen35_rows
    from gpu_check_vl import vl_rows

    from megatron_zppo.train import parallel

    smoke = args.cpu_smoke
    peaks = {"datasheet": peak_tflops(args.peak_tflops), "measured": None}
    report.section("not available here", lambda: unavailable_rows(smoke))

    def matmul_rows():
        n, kind = (512 if smoke else 8192), train_kind()[0]  # the dtype the trainer runs in here
        peaks["measured"] = (kind, measure_matmul_tflops(n, kind))
        return [f"| peak | {kind} matmul {n}^3, measured here | {peaks['measured'][1]:,.4g} TFLOP/s (datasheet: "
                f"{(peaks['datasheet'] or {}).get(kind, 'unknown')}) |"]

    report.section("peak", matmul_rows)
    sections = {
        "qwen3": ("Qwen3", lambda: qwen3_rows(args, peaks)),
        "memory": ("chunked log-probs", lambda: chunked_logprob_memory_rows(smoke)),
        "qwen35": ("Qwen3.5", lambda: qwen35_rows(sys.modules[__name__], smoke, args)),
        "vl": ("Qwen3.5-VL", lambda: vl_rows(sys.modules[__name__], smoke, args)),
        "packing": ("packing", lambda: packing_rows(args)),
    }
    parallel.initialize(parallel.ParallelConfig(seed=0))
    try:
        for key, (name, rows) in sections.items():
            if key in args.sections:
                report.section(name, rows)
            else:
                report.add([f"| {name} | - | not run: left out by --sections |"])
    finally:
        parallel.destroy()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny models on CPU: the same code path in < 60 s")
    ap.add_argument("--out", default=str(Path(os.environ.get("OUT", ".")) / "gpu_check.md"))
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per setting (median reported)")
    ap.add_argument("--peak-tflops", type=float, help="dense bf16 peak of this card (FP8 taken as twice it)")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated subset of {','.join(SECTIONS)} (a rerun of what a short lease missed)")
    args = ap.parse_args(argv)
    args.sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        ap.error(f"--sections: unknown {unknown}; expected a subset of {list(SECTIONS)}")
    if not args.cpu_smoke and not torch.cuda.is_available():
        ap.error("no GPU visible; use --cpu-smoke to run the same code on a tiny model on CPU")
    from megatron_zppo.train import cpu_compat

    cpu_compat.enable()  # the CPU shims for --cpu-smoke; the TE import stand-in on a GPU without TE
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    t0 = time.perf_counter()
    report = Report(Path(args.out), [f"# gpu_check on {device}", "", f"torch {torch.__version__}, "
                                     f"{versions()}", "", "| check | setting | result |", "|---|---|---|"])
    run(args, report)
    report.add([f"| total | wall clock of the check | {time.perf_counter() - t0:.0f} s |"])
    if report.failed:
        print(f"[gpu_check] FAILED sections: {', '.join(report.failed)}", file=sys.stderr)
    return 1 if report.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
