"""The training step with one op pinned to each implementation named: ms, launches and GPU busy time per step,
and how many Inductor (``triton_*``) kernels one step launches — does the step run what the gate timed?

    python scripts/step_pin.py gate_norm_residual=triton gate_norm_residual=compile [--size small] [--steps 20]
    python scripts/step_pin.py none lowrank=reference,wgrad=reference --size large --parallel-autotune

Each PIN is ``op=impl`` or several joined by commas (``groundthink.registry.resolve("triton", overrides=...)``;
the other ops as ``--kernels triton``; ``none``: all of them so); the step is ``bench.bench_train.measure_training`` (bf16 autocast, fused AdamW, CUDA graph,
``--graph off`` for eager) at the size's bench shape (small B64 T256, large B16 T1024), GF-MH unless ``--variant``.
Session 11 (peer15): with gate_norm_residual pinned to torch.compile the step ran the reference eagerly (≈ 33
kernels a call, no Inductor kernel); fixed in kernels/gate_norm_residual/peers.py. Needs CUDA."""
from __future__ import annotations

import argparse

import torch


def count_inductor(step_fn) -> tuple[int, int]:
    """(Inductor kernels, all kernels) launched by one call of ``step_fn``, from the profiler's CUDA events."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step_fn()
        torch.cuda.synchronize()
    names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return sum(n.startswith("triton_") for n in names), len(names)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("pins", nargs="+", help="op=impl[,op=impl...] or none, one step per pin")
    p.add_argument("--size", default="small", choices=("small", "large"))
    p.add_argument("--variant", default="GF-MH")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--graph", default="on", choices=("on", "off"))
    p.add_argument("--vocab", type=int, default=None, help="vocabulary size (default: the bench's)")
    p.add_argument("--parallel-autotune", action="store_true",
                   help="build and capture inside train.py's parallel_autotune (as its first step does)")
    args = p.parse_args(argv)
    bad = [pin for pin in args.pins for one in pin.split(",") if pin != "none" and one.count("=") != 1]
    if bad:
        p.error(f"a pin is op=impl, got {bad}")
    if not torch.cuda.is_available():
        p.error("needs a CUDA device (it times the step and counts its kernels)")
    import fused
    from bench.bench_train import STEP_SHAPES, VOCAB, measure_training
    from groundthink.precompile import parallel_autotune
    from groundthink.registry import resolve
    from groundthink.step import capture_failure
    torch.set_float32_matmul_precision("high")
    B, T = STEP_SHAPES[args.size]
    for pin in args.pins:
        pins = dict(one.split("=") for one in pin.split(",")) if pin != "none" else {}
        try:
            with parallel_autotune(enabled=args.parallel_autotune):
                model = fused.get_model(args.variant, size=args.size, vocab_size=args.vocab or VOCAB,
                                        ops=resolve("triton", overrides=pins)).cuda()
                res = measure_training(model, B, T, 3, args.steps, graph=args.graph == "on", profile=3,
                                       keep_step=True)
        except Exception as e:  # noqa: BLE001 - a failed capture is this tool's finding: say where, go on
            print(f"{pin:32} {args.size} graph {args.graph}: FAILED {capture_failure(e)}", flush=True)
            import traceback
            traceback.print_exc()
            torch.cuda.synchronize()
            continue
        inductor, kernels = count_inductor(res["step_fn"])
        print(f"{pin:32} {args.size} graph {args.graph}: {res['ms']:7.2f} ms/step, {res['launches']:5.0f} launches, "
              f"busy {res['busy_ms']:6.2f} ms, Inductor kernels {inductor:3d} of {kernels}, "
              f"warm-up {res['warmup_s']:.1f} s", flush=True)
        del res, model
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
