"""Running time of one method on one image size (Table 4): ``python -m benchmark.run runtime METHOD``.

Timing uses the bare architecture (``weights="init"``): the work a forward pass does does not
depend on the values of the weights. Each measurement warms up first (``warmup`` passes,
which also lets cuDNN and the CPU allocator settle), synchronises the device around every
timed pass and reports the median, minimum and maximum of ``repeats`` passes. ``gflops``
counts the floating-point operations of one pass (per batch) with
``torch.utils.flop_counter`` (convolutions and matrix products; element-wise work is not
counted). ``peak_mem_mb`` is the accelerator's peak allocation on CUDA and the growth of
this process's peak resident set on the CPU (0 when the pass fits in memory already held).

``compile=True`` goes through :func:`compile_for_inference`: TorchInductor with weight freezing,
which folds the weights into the graph and fuses each convolution with the LeakyReLU / ReLU and
the residual addition after it (oneDNN post-ops), so the activations are not read and written
again by separate element-wise passes.
"""
from __future__ import annotations

import platform
import resource
import statistics
import time
from contextlib import nullcontext

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def hardware(device: torch.device) -> str:
    """A short name of the machine that ran: the GPU's name, or the CPU model and thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {torch.get_num_threads()} threads"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compile_for_inference(net: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile`` for inference only: Inductor with ``freezing`` (weights become constants of
    the graph, convolutions are fused with the element-wise work that follows them). The first call
    per input shape compiles (seconds to minutes); the result must then only be called under
    ``torch.inference_mode`` or ``torch.no_grad``, and changes to the weights are not seen.
    ``dynamic=False``: each image size gets its own static graph (up to Dynamo's recompile limit,
    8 by default, then eager). The default would switch to one shape-generic graph at the second
    size, and that graph ran ResGuideNet at 321x481 in 1.0 s against 0.62 s static (one thread)."""
    return torch.compile(net, options={"freezing": True}, dynamic=False)


def _count_gflops(net: torch.nn.Module, x: torch.Tensor, autocast) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), autocast, counter:
        net(x)
    return counter.get_total_flops() / 1e9


def measure(method: str, size: int = 500, device: str = "cpu", dtype: str = "float32", batch: int = 1,
            repeats: int = 5, warmup: int = 2, seed: int = 0, channels_last: bool = False,
            compile: bool = False) -> dict:
    """Time ``method`` on ``batch`` random ``size`` x ``size`` RGB images; one result dict."""
    from models.registry import count_parameters, load

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if size < 8 or batch < 1 or repeats < 1 or warmup < 0:
        raise ValueError(f"need size >= 8, batch >= 1, repeats >= 1, warmup >= 0 "
                         f"(got size={size}, batch={batch}, repeats={repeats}, warmup={warmup})")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but PyTorch sees no CUDA device here")
    net, _ = load(method, "init")
    params = count_parameters(net)
    net = net.to(dev).eval()
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)).to(dev)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(dev.type, dtype=DTYPES[dtype]) if dtype != "float32" else nullcontext()
    gflops = _count_gflops(net, x, autocast)
    if compile:
        net = compile_for_inference(net)

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    with torch.inference_mode(), autocast:
        for i in range(warmup + repeats):
            _sync(dev)
            t0 = time.perf_counter()
            net(x)
            _sync(dev)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    if dev.type == "cuda":
        peak_mb = (torch.cuda.max_memory_allocated(dev) - base) / 2**20
    else:  # ru_maxrss is in KiB on Linux
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    median = statistics.median(times)
    return {
        "method": method, "size": size, "device": dev.type, "dtype": dtype, "batch": batch,
        "channels_last": channels_last, "compile": compile,
        **({"compile_options": {"freezing": True}} if compile else {}),
        "median_s": median, "min_s": min(times), "max_s": max(times), "repeats": repeats,
        "images_per_s": batch / median, "threads": torch.get_num_threads(),
        "params": params["trainable"], "gflops": round(gflops, 3), "peak_mem_mb": round(peak_mb, 1),
        "hardware": hardware(dev), "torch": str(torch.__version__),
    }
