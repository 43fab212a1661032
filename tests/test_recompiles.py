"""``torch.compile(model, fullgraph=True)`` does not recompile on the second identical call, on every
family: nothing the compiled region reads is filled lazily (the dispatcher's Triton status, the
cached window masks and region passes).

Run in a fresh process, where no cache has been filled by an earlier test, with
``torch._dynamo.config.error_on_recompile``; the ops on automatic dispatch (the reference on a
CPU without Triton's interpreter, so that the dispatcher's own decision is traced). Dynamo's
``eager`` backend: a recompile is decided by Dynamo's guards, before any backend compiles, and
CPU inductor would cost minutes.
"""
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

SCRIPT = """
import sys
import torch
sys.path.insert(0, {tests!r})
from families import FAMILIES, tiny
from helpers import model_inputs, randomize_

torch._dynamo.config.error_on_recompile = True
for cls in FAMILIES:
    torch._dynamo.reset()
    model = randomize_(tiny(cls)).set_backend(None).eval()
    inputs = model_inputs(model)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        first = compiled(*inputs)
        try:
            second = compiled(*inputs)
        except torch._dynamo.exc.RecompileError as exc:
            print(cls.__name__, "recompiled:", str(exc).splitlines()[-1])
            continue
        # under compile the CPU attention takes its exact path, not SDPA: fp32 rounding apart
        torch.testing.assert_close(first, model(*inputs), rtol=1e-4, atol=1e-5)
    assert torch.equal(first, second), cls.__name__
    print(cls.__name__, "compiled once")
"""


def test_a_second_identical_call_does_not_recompile():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["HF_HUB_OFFLINE"] = "1"
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(tests=str(TESTS))], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    assert done.stdout.count("compiled once") == 8, done.stdout
