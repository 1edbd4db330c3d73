"""What the CPU's kernels allow: ``python -m benchmark.convfloor [--size 500] [--repeats 7] [--features 16]``.

ResGuideNet's work is fifty 3x3 convolutions from 16 to 16 channels (five blocks, five uses of a
two-convolution unit); the rest (image-facing convolutions, additions, concatenations) is small.
This command times a chain of ten such convolutions, each followed by LeakyReLU, at
``size`` x ``size``, in float32 and bfloat16, eager and compiled (:func:`compile_for_inference`,
where the activation is fused into the convolution), and prints one JSON line per setting with
the time per convolution, its GFLOP/s and ``x50_s``, the time fifty of them take: a floor no
ResGuideNet pass built from these kernels can beat. A last line gives the GFLOP/s of a
2048x2048 matrix product, the figure Table 4's targets were derived from.

``--features`` sets the convolutions' width: 16 is ResGuideNet's, 32 PReNet's, 64 JORDER's and
DnCNN's, so each method's GFLOP/s (``runtime``'s ``gflops`` over its time) can be set beside the
floor of its own convolutions.
"""
from __future__ import annotations

import argparse
import json
import statistics
from contextlib import nullcontext

import torch

from benchmark.inference import compile_for_inference
from benchmark.runtime import prepare_cpu, time_passes


class _Chain(torch.nn.Module):
    def __init__(self, n: int = 10, features: int = 16):
        super().__init__()
        self.convs = torch.nn.ModuleList(torch.nn.Conv2d(features, features, 3, padding=1) for _ in range(n))
        self.act = torch.nn.LeakyReLU(0.2)

    def forward(self, x):
        for conv in self.convs:
            x = self.act(conv(x))
        return x


def _median(fn, repeats: int, warmup: int = 2) -> float:
    return statistics.median(time_passes(fn, repeats, warmup))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.convfloor", description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=500)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--features", type=int, default=16, help="input and output channels of each convolution")
    args = p.parse_args(argv)
    c = args.features
    if c < 1:
        p.error(f"--features must be positive, got {c}")
    malloc = prepare_cpu()  # as every CLI command: denormals flushed, allocator tuned
    torch.manual_seed(0)
    chain = _Chain(features=c).eval().to(memory_format=torch.channels_last)
    n = len(chain.convs)
    x = torch.rand(1, c, args.size, args.size).contiguous(memory_format=torch.channels_last)
    flop = 2 * c * c * 9 * args.size * args.size
    for dtype in ("float32", "bfloat16"):
        for compiled in (False, True):
            net = compile_for_inference(chain) if compiled else chain
            autocast = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bfloat16" else nullcontext()
            with torch.inference_mode(), autocast:
                per_conv = _median(lambda: net(x), args.repeats) / n
            print(json.dumps({"what": f"conv3x3 {c}->{c} + LeakyReLU, channels-last", "size": args.size,
                              "dtype": dtype, "compile": compiled, "per_conv_ms": round(per_conv * 1e3, 3),
                              "gflop_per_s": round(flop / per_conv / 1e9, 1), "x50_s": round(50 * per_conv, 3),
                              "threads": torch.get_num_threads(), "malloc": malloc}), flush=True)
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.rand(2048, 2048, dtype=dtype), torch.rand(2048, 2048, dtype=dtype)
        t = _median(lambda: a @ b, args.repeats)
        print(json.dumps({"what": "matmul 2048x2048", "dtype": str(dtype).removeprefix("torch."),
                          "gflop_per_s": round(2 * 2048**3 / t / 1e9, 1), "threads": torch.get_num_threads()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
