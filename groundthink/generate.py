"""Sample text from a train.py checkpoint on the model's recurrent path.

    python -m groundthink.generate --ckpt checkpoints/GF-MH-small/ckpt_GF-MH_final.pt --prompt "The " \\
        --tokens 200 --temperature 0.8 --top-k 40

The prompt is prefilled in parallel from a zero state, then every new token goes through ``model.step`` (constant
memory and time per token: the RWKV-6 and Mamba-2 states, no attention cache). Runs on CPU or GPU (``--device``);
``--kernels reference`` (default: exact, nothing to qualify) or ``auto`` / ``triton`` for the lab kernels.
``--temperature 0`` is greedy decoding. The checkpoint is integrity-checked and read as plain data only
(``groundthink.checkpoint.load``). Bad input ends in one line ``error: ...`` and exit status 2.
"""
from __future__ import annotations

import math
import sys

from groundthink.cli import ArgumentParser, fail
from groundthink.errors import InputError

MAX_TOKENS = 1_000_000
NEEDED = ("model", "tokenizer", "model_name", "size", "vocab_size", "config")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m groundthink.generate", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="a checkpoint written by train.py (ckpt_*.pt)")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--tokens", type=int, default=200, help="tokens to sample after the prompt")
    p.add_argument("--temperature", type=float, default=0.8, help="softmax temperature (0: greedy)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the K most likely tokens (default: all)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--kernels", default="reference", choices=["reference", "auto", "triton"])
    return p


def check_args(a) -> None:
    if not 1 <= a.tokens <= MAX_TOKENS:
        raise InputError(f"--tokens {a.tokens}: out of range; accepted: an integer from 1 to {MAX_TOKENS:,}")
    if not math.isfinite(a.temperature) or a.temperature < 0:
        raise InputError(f"--temperature {a.temperature}: out of range; accepted: a finite number ≥ 0 (0: greedy)")
    if a.top_k is not None and a.top_k < 1:
        raise InputError(f"--top-k {a.top_k}: out of range; accepted: an integer ≥ 1 (leave it out for all tokens)")
    if not 0 <= a.seed <= 2**32 - 1:
        raise InputError(f"--seed {a.seed}: out of range; accepted: an integer from 0 to {2**32 - 1}")
    if a.prompt == "":
        raise InputError("--prompt is empty; accepted: at least one character (default: a newline)")


def load_model(path, kernels: str, device):
    """(model in eval mode on ``device``, tokenizer) from a train.py checkpoint."""
    import fused
    from groundthink import checkpoint as ckpt
    from groundthink.data import tokenizer_from_state
    from groundthink.registry import resolve
    try:
        state = ckpt.load(path)
    except ckpt.CheckpointError as e:
        raise InputError(f"--ckpt {e}") from None
    missing = [k for k in NEEDED if k not in state]
    if missing:
        raise InputError(f"--ckpt {path}: not a train.py checkpoint (no {', '.join(missing)}); accepted: a ckpt_*.pt "
                         f"written by train.py")
    cfg = {k: v for k, v in (state["config"] or {}).items() if k not in ("name", "size", "vocab_size")}
    model = fused.get_model(state["model_name"], size=state["size"], vocab_size=state["vocab_size"],
                            ops=resolve(kernels), **cfg)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise InputError(f"--ckpt {path}: weights do not fit {state['model_name']}/{state['size']} "
                         f"({str(e).splitlines()[0][:120]}); accepted: an unmodified train.py checkpoint") from None
    return model.to(device).eval(), tokenizer_from_state(state["tokenizer"])


def generate(a) -> str:
    """The prompt followed by ``a.tokens`` sampled tokens, decoded."""
    import torch
    check_args(a)
    if a.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device here; accepted: --device cpu or auto")
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                          a.device if a.device != "auto" else "cpu")
    import kernels  # noqa: F401  (on a CPU-only machine: the Triton interpreter, before any kernel module)
    model, tok = load_model(a.ckpt, a.kernels, device)
    if a.top_k is not None and a.top_k > tok.vocab_size:
        raise InputError(f"--top-k {a.top_k}: larger than the vocabulary ({tok.vocab_size}); accepted: 1 to "
                         f"{tok.vocab_size}")
    try:
        ids = tok.encode(a.prompt)
    except ValueError as e:
        raise InputError(f"--prompt: {e}") from None
    if not ids:
        raise InputError("--prompt encodes to no tokens; accepted: a longer prompt")
    torch.manual_seed(a.seed)
    prompt = torch.tensor([ids], dtype=torch.long, device=device)
    out = model.generate(prompt, a.tokens, temperature=a.temperature, top_k=a.top_k)
    return a.prompt + tok.decode(out[0, prompt.shape[1]:].tolist())


def main(argv=None) -> str:
    a = build_parser().parse_args(argv)
    try:
        text = generate(a)
    except InputError as e:
        fail(str(e))
    print(text)
    return text


if __name__ == "__main__":
    main()
    sys.exit(0)
