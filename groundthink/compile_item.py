"""One background compile item in a subprocess of its own: ``python -m groundthink.compile_item ITEM-JSON
[--shard I/N]``, started by ``groundthink.precompile.Background`` (that module's docstring says why and how).

ITEM-JSON is ``[op, impl, shape]``: ``shape`` is the item's calls (``groundthink.calls.Call.payload()``s) or, for
``gate.early_background``'s item, ``{"model": the run's model arguments}``, whose step calls this process records
itself (``model_calls``: its own copy of the model, the step's strides included: mamba2's dt is a column slice,
``[dt rows 592]`` at GF-MH small). Recording them builds the model through the registry, which sits above the
gate; this entry point therefore lives here, above both, and ``groundthink.precompile`` imports nothing above it
(no registry -> gate -> precompile -> registry cycle).
"""
from __future__ import annotations

import json
import sys

from groundthink import precompile      # first: its load time is the subprocess's start (the item line's "at")


def model_calls(model: dict, device: str = "cuda") -> dict:
    """``groundthink.calls.step_calls`` of the model that ``model`` describes ("name", "size", "overrides",
    "batch_size", "seq_len"; any vocabulary), built on ``device`` with the references (under the step's autocast
    on CUDA: the calls the main process records after it has built its own model)."""
    import torch

    import fused
    from groundthink.calls import step_calls
    from groundthink.registry import resolve
    dev = torch.device(device)
    net = fused.get_model(model["name"], size=model["size"], vocab_size=256,
                          ops=resolve("reference", cuda=dev.type == "cuda"), **model.get("overrides", {})).to(dev)
    return step_calls(net, model["batch_size"], model["seq_len"])


def payloads(op: str, shape, device: str = "cuda") -> list:
    """An item's calls of ``op``: ``shape`` itself (``Call.payload()``s), or for {"model": ...} those the run's
    model makes (``model_calls``)."""
    if isinstance(shape, dict):
        return [c.payload() for c in model_calls(shape["model"], device).get(op, []) if c.shape is not None]
    return shape


def main(argv: list[str]) -> None:
    """Compile the item (``precompile._compile_item``: its calls recorded inside the dry run, so that a model whose
    calls fail to record fails the item), then say the JSON summary."""
    op, impl, shape = json.loads(argv[0])
    i, n = (int(x) for x in (argv[2] if argv[1:2] == ["--shard"] else "0/1").split("/"))
    # at the main process's priority: at nice 10 the long item (mamba-ssm) got the CPU only when the main's own
    # compiles paused and was the critical path (run 10: 55.9 s for 42 compiles, the item waited 30.8 s)
    import kernels  # noqa: F401 - the Triton interpreter switch, before any kernel is defined
    summary = precompile._compile_item(op, impl, lambda: payloads(op, shape),
                                       say=lambda line: print(line, flush=True), shard=(i, n))
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
