"""The suite's one inference path: every cell, ``score``, ``detect``, the figures and ``runtime``
derain through :class:`Derainer`.

The path is float32, channels-last, under ``inference_mode``, and **compiled** (Inductor with weight
freezing, :func:`compile_for_inference`) where that pays: compiling costs seconds
to tens of seconds per image shape and saves a share of every pass, so a cell compiles when its
images add up to at least :data:`COMPILE_MIN_MEGAPIXELS` (the KITTI and DAWN detection cells, the
large paired sets) and stays eager below (the smoke and quick cells on small sets, whose whole
evaluation takes less than a compilation). The rule depends on the cell only (its image count
times the first image's size), never on which worker runs it, so a sharded cell takes the serial
cell's path. bfloat16 is never used by default (it changes the numbers).

Image sizes: the compiled graph is shape-generic (``torch.compile(dynamic=True)``), so DAWN's 77
sizes, KITTI's four and Rain100L's two orientations compile once per method and process, with no
padding (padding to shape buckets was measured and rejected: edge pixels repeated to a multiple of
64 moved ResGuideNet's border pixels by up to 0.31 and the mean PSNR of 12 Rain100L images by
+0.045 dB). The generic graph ran as fast as a graph specialised to the shape (ResGuideNet at
720x1280: 1.78 s generic, 1.83 s specialised, 3.2 s eager, 2 threads) and a second size cost
2 s of guard checks and re-specialisation instead of a 7 s compilation.

``--eager`` (every command) or ``RESGUIDE_EAGER=1`` forces the eager path (same format, no
compilation), for debugging and comparison. Methods in :data:`EAGER_ONLY` never
compile; the dict says why. Each cell records the path it ran (``inference``); the path is not
part of a cell's fingerprint, since it does not change the numbers beyond the check tolerances.
"""
from __future__ import annotations

import contextlib
import os

import numpy as np
import torch


#: a cell compiles its derainer when its images add up to at least this many megapixels
COMPILE_MIN_MEGAPIXELS = 20.0
#: methods that never compile, and why (read by the tests and the report)
EAGER_ONLY = {
    "gmm": "a per-image optimisation in NumPy and SciPy, not a torch graph",
    "identity": "no computation",
    "did_mdn": "compiling its graph took 101 s at 64x64 on 2 threads, more than it saves on any cell here",
}
#: graphs Dynamo may compile per code object before it falls back to eager (its default, 8, is
#: reached by the ResGuideNet family's variants, which share one code object)
RECOMPILE_LIMIT = 64
#: methods compiled with one graph per image shape instead of the shape-generic one, and why
STATIC_SHAPES = {
    m: "shape-generic, Inductor's fused 64-channel convolution failed a stride assertion (torch 2.14)"
    for m in ("dncnn", "dncnn_color")
}
#: set to "1" (``--eager``) to run every derainer eager; inherited by executor workers
EAGER_ENV = "RESGUIDE_EAGER"


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 HxWxC -> float32 1xCxHxW in [0, 1]; a float image (e.g. a noisy one) is taken as is."""
    if np.asarray(img).dtype != np.uint8:
        return torch.from_numpy(np.array(img, dtype=np.float32)).permute(2, 0, 1).unsqueeze(0)
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)


def to_image(t: torch.Tensor) -> np.ndarray:
    """1x3xHxW float -> HxWx3 float64 (rounded to uint8 by the metrics)."""
    return t.detach().squeeze(0).permute(1, 2, 0).double().cpu().numpy()


def run_model(net: torch.nn.Module, rainy: np.ndarray, dtype: str = "float32", channels_last: bool = True,
              device: str = "cpu") -> np.ndarray:
    """``net`` on one image; ``dtype="bfloat16"`` runs under CPU autocast (a fast path whose
    effect on the metrics is measured, not assumed), ``channels_last`` the NHWC memory format."""
    x = to_tensor(rainy).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if dtype == "bfloat16" else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        out = net(x).float()
    if out.shape[-2:] != x.shape[-2:]:
        raise ValueError(f"model output {tuple(out.shape)} does not match input {tuple(x.shape)}")
    return to_image(out)


class FrozenCompiled(torch.nn.Module):
    """``net`` behind ``torch.compile``, every call made with Inductor's ``freezing`` switched on.

    The flag has to be set in the global Inductor config while Dynamo traces: Dynamo itself reads
    it (``torch._dynamo.utils.is_parameter_freezing``) to decide whether the parameters are
    constants of the graph. Passing it as ``torch.compile(options={"freezing": True})`` reaches only
    Inductor: the graph then keeps the weights as inputs, no convolution is packed or fused and
    the result is an ordinary compiled graph (this suite's compiled path was that before: 0.79 s
    against 0.61 s frozen for ResGuideNet at 500x500 on 2 threads). ``dynamic``: one shape-generic
    graph (True, the default) or one graph per input shape (False). Attributes the wrapped model
    has (e.g. the auto-exit model's ``last_exit``) are read through."""

    def __init__(self, net: torch.nn.Module, dynamic: bool = True):
        super().__init__()
        self.inner = net
        self.compiled = torch.compile(net, dynamic=dynamic)

    def forward(self, *args, **kwargs):
        from torch._inductor import config

        with config.patch(freezing=True):
            return self.compiled(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("inner"), name)


def compile_for_inference(net: torch.nn.Module, dynamic: bool = True) -> torch.nn.Module:
    """``torch.compile`` for inference only: Inductor with weight freezing (:class:`FrozenCompiled`:
    the weights become constants of the graph, are packed once for oneDNN, and each convolution is
    fused with the LeakyReLU / ReLU after it). The first call per input shape compiles (seconds to
    minutes); the result must then only be called under ``torch.inference_mode`` or
    ``torch.no_grad`` (with gradients on, Inductor does not freeze), and changes to the weights are
    not seen. The graph is shape-generic unless ``dynamic=False`` (see the module's notes on image
    sizes). A model whose
    forward is not one fixed graph (JORDER's loop over crops) offers ``compile_parts(compiler)``,
    which compiles the parts that are and returns the model to use."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit,
                                                           4 * RECOMPILE_LIMIT)
    parts = getattr(net, "compile_parts", None)
    if callable(parts):  # fixed-size parts (JORDER's 100x100 crops): a static graph each. Shape-generic,
        # Inductor's convolution fusion failed on them (a stride assertion in torch 2.14)
        return parts(lambda part: FrozenCompiled(part, dynamic=False))
    return FrozenCompiled(net, dynamic)


def eager_forced() -> bool:
    """Whether ``--eager`` / ``RESGUIDE_EAGER=1`` asked for the eager path."""
    return os.environ.get(EAGER_ENV, "") not in ("", "0")


def choose_path(method: str, megapixels: float, path: str = "auto") -> tuple[str, str]:
    """``("compiled" | "eager", why)`` for ``method`` on a cell of ``megapixels``; ``path`` is
    ``"auto"`` (the rule of this module), ``"eager"`` or ``"compiled"`` (still eager for a method
    of :data:`EAGER_ONLY`, or under ``--eager``)."""
    if path not in ("auto", "eager", "compiled"):
        raise ValueError(f"inference path must be auto, eager or compiled, got {path!r}")
    if method in EAGER_ONLY:
        return "eager", EAGER_ONLY[method]
    if path == "eager" or eager_forced():
        return "eager", "asked for (--eager)"
    if path == "compiled":
        return "compiled", "asked for"
    if megapixels < COMPILE_MIN_MEGAPIXELS:
        return "eager", f"{megapixels:.1f} megapixels, under the {COMPILE_MIN_MEGAPIXELS:g} a compilation pays for"
    return "compiled", f"{megapixels:.1f} megapixels"


def image_megapixels(img: np.ndarray) -> float:
    """An HxWx... image's size in megapixels."""
    return img.shape[0] * img.shape[1] / 1e6


def cell_megapixels(dataset) -> float:
    """A paired cell's work: its image count times its first image's size, in megapixels."""
    n = len(dataset)
    return n * image_megapixels(next(iter(dataset))[1]) if n else 0.0


class Derainer:
    """``net`` (a registered ``method``) on the suite's inference path: call it on a uint8 (or
    float) HxWxC image for a float64 HxWxC output; :meth:`describe` says which path runs."""

    def __init__(self, net: torch.nn.Module, method: str, megapixels: float = 0.0, path: str = "auto",
                 device: str = "cpu", channels_last: bool = True):
        self.method, self.device, self.channels_last, self.megapixels = method, device, channels_last, megapixels
        self.path, self.why = choose_path(method, megapixels, path if channels_last else "eager")
        net = net.to(device).eval().to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        self.eager_net = net
        static = STATIC_SHAPES.get(method)
        if self.path == "compiled" and static:
            self.why += f"; a graph per image shape ({static})"
        self.net = compile_for_inference(net, dynamic=not static) if self.path == "compiled" else net

    def __call__(self, rainy: np.ndarray, dtype: str = "float32") -> np.ndarray:
        return run_model(self.net, rainy, dtype, self.channels_last, self.device)

    @property
    def last_exit(self):
        """Blocks the auto-exit model ran for the last image (None for other models)."""
        return getattr(self.eager_net, "last_exit", None)

    def describe(self) -> dict:
        """What a cell records of the path: ``{"path", "why", "channels_last", "megapixels"}``."""
        return {"path": self.path, "why": self.why, "channels_last": self.channels_last,
                "megapixels": round(self.megapixels, 3)}
