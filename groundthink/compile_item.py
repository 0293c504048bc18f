"""Background compile items in a subprocess: ``python -m groundthink.compile_item ITEMS-JSON [--shard I/N]``,
started by ``groundthink.precompile.Background`` (that module's docstring says why and how).

ITEMS-JSON is ``[[op, impl, shape], ...]`` (or one ``[op, impl, shape]``): ``shape`` is the item's calls
(``groundthink.calls.Call.payload()``s) or, for ``gate.early_background``'s items, ``{"model": the run's model
arguments}``, whose step calls this process records itself, once per model (``model_calls``: its own copy of the
model, the step's strides included: mamba2's dt is a column slice, ``[dt rows 592]`` at GF-MH small). Recording them
builds the model through the registry, which sits above the gate; this entry point therefore lives here, above both,
and ``groundthink.precompile`` imports nothing above it (no registry -> gate -> precompile -> registry cycle).
"""
from __future__ import annotations

import json
import sys

from groundthink import precompile      # first: its load time is the subprocess's start (the item line's "at")

if __name__ == "__main__":
    precompile.apply_settings()     # before the imports below: GROUNDTHINK_BACKGROUND_NICE, the matmul precision


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


def payloads(op: str, shape, device: str = "cuda", recorded: dict | None = None) -> list:
    """An item's calls of ``op``: ``shape`` itself (``Call.payload()``s), or for {"model": ...} those the run's
    model makes (``model_calls``; ``recorded``: a cache of them by model, so that a subprocess compiling several
    items records its model once)."""
    if isinstance(shape, dict):
        key = json.dumps(shape["model"], sort_keys=True, default=str)
        recorded = {} if recorded is None else recorded
        if key not in recorded:
            recorded[key] = model_calls(shape["model"], device)
        return [c.payload() for c in recorded[key].get(op, []) if c.shape is not None]
    return shape


def main(argv: list[str]) -> None:
    """Compile the items (``precompile._compile_items``: their calls recorded inside the dry run, so that a model
    whose calls fail to record fails the item), then say the JSON summary."""
    items = json.loads(argv[0])
    items = [items] if isinstance(items[0], str) else items
    i, n = (int(x) for x in (argv[2] if argv[1:2] == ["--shard"] else "0/1").split("/"))
    # at the main process's priority: at nice 10 the long item (mamba-ssm) got the CPU only when the main's own
    # compiles paused and was the critical path (run 10: 55.9 s for 42 compiles, the item waited 30.8 s)
    import kernels  # noqa: F401 - the Triton interpreter switch, before any kernel is defined
    recorded: dict = {}
    summary = precompile._compile_items([tuple(item) for item in items], say=lambda line: print(line, flush=True),
                                        shard=(i, n), payloads=lambda op, shape: payloads(op, shape, recorded=recorded))
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
