"""CUDA-graph replay of generation's forward passes: batch-1 passes without launch overhead.

At batch 1 a pass computes little (a dual-cached block of LLaDA-8B reads 16 GB of weights, about 4 ms)
but the eager forward launches some 1,400 kernels from Python, one module at a time; on one H200 such
passes cost 22-36 ms whatever they computed, and the GPU was busy 33% of a dual-cached run. A captured
CUDA graph replays the same kernels with one launch. :class:`GraphRunner` stands in for the model at
the loop's one call site (``core.decode._forward``) and takes the same keyword arguments:

- a plain pass, a KV-cache refill and a cached window pass each get one graph per input shape (and
  per head and logits offset), captured the first time that shape comes and replayed after; the
  runner's first pass runs eager (a warm-up), and so does the first refill of a new canvas size (it
  lays out the static cache as an eager cache is laid out);
- inputs are copied into static buffers; the KV cache is one static cache refilled in place; a window
  pass takes its first column from a one-number buffer, so one graph serves every block of a dual cache;
- outputs are the graphs' own tensors, valid until the runner's next replay: all graphs share one
  memory pool, so a replay may overwrite any earlier pass's outputs. The loop consumes a pass's logits
  before it asks for the next pass (and strategies keep no view of them).

The runner stays with the model between calls (:func:`runner_for`), so a second call of the same
shapes captures nothing; :func:`release_graphs` frees it. The kernels are the eager forward's, on the
same values and memory layouts, so the results are the eager path's bit for bit (checked on GPU by
``tests/benchmarks/gpu_decode.py --graphs off+on``). A model on the CPU never takes this path:
:func:`graph_fallback_reason` says why, and the loop runs eager.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from refinery.core.model import KVCache

log = logging.getLogger(__name__)

GRAPH_MODES = ("auto", "on", "off")
# "auto" captures batches of up to this many rows. Larger batches are compute-bound (at batch 32 the 8B
# forward hid its launches: 0.1-0.3% of a pass outside it) and each graph's logits cost GBs there.
AUTO_MAX_ROWS = 4
MAX_GRAPHS = 24  # graphs kept per model (least recently used go first): each holds its outputs' memory

Capture = Callable[[Callable[[], object], object], tuple[Callable[[], None], object]]


def graph_fallback_reason(model, rows: int, mode: str, cache: str = "none") -> Optional[str]:
    """Why generation with ``graphs=mode`` runs the eager forward for ``model`` at ``rows`` rows and KV-cache
    mode ``cache``; None when it replays CUDA graphs. Raises ValueError for a mode outside :data:`GRAPH_MODES`."""
    if mode not in GRAPH_MODES:
        raise ValueError(f"graphs {mode!r} unknown; choose one of {list(GRAPH_MODES)}")
    if mode == "off":
        return "graphs='off'"
    device = next(model.parameters()).device
    if device.type != "cuda":
        return f"the model is on the {device.type}: CUDA graphs need a CUDA device"
    if mode == "auto" and rows > AUTO_MAX_ROWS:
        return (f"a batch of {rows} rows (graphs='auto' captures up to {AUTO_MAX_ROWS}; larger batches are "
                f"compute-bound); graphs='on' forces them")
    if mode == "auto" and cache == "prefix":
        # A prefix window narrows every block: one graph per width, each replayed a few times. On one H200
        # that ran at 17 ms a pass in one run and 34 ms in another, against 22-30 ms eager (the cause is
        # not found yet); dual windows keep one width and ran 2.3x and 3.5x faster than eager there.
        return "cache='prefix' needs one graph per block width (measured no faster than eager); graphs='on' forces it"
    return None


def cuda_capture(fn: Callable[[], object], pools: list) -> tuple[Callable[[], None], object]:
    """Capture ``fn``'s kernels into a CUDA graph -> (replay, fn's outputs). ``pools`` holds the memory pool
    the runner's graphs share (made on the first capture).

    Captures on a side stream with the low-level calls: ``torch.cuda.graph`` would also synchronise and
    empty the allocator's cache before every capture, which a loop capturing a few shapes does not need.
    The outputs hold garbage until the first replay."""
    if not pools:
        pools.append(torch.cuda.graph_pool_handle())
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        graph.capture_begin(pool=pools[0])
        try:
            out = fn()
        except BaseException:
            with contextlib.suppress(Exception):
                graph.capture_end()
            raise
        graph.capture_end()
    torch.cuda.current_stream().wait_stream(stream)
    return graph.replay, out


def call_again(fn: Callable[[], object], pools: list) -> tuple[Callable[[], None], object]:
    """A stand-in for :func:`cuda_capture` on the CPU (tests): "capture" runs ``fn`` once; a replay runs it
    again on the static buffers and copies the new outputs into the first ones, as a graph would write them."""
    out = fn()

    def replay() -> None:
        new = fn()
        for name in ("logits", "next_logits", "hidden_states"):
            if getattr(out, name) is not None:
                getattr(out, name).copy_(getattr(new, name))

    return replay, out


@dataclass
class _Graph:
    replay: Callable[[], None]
    inputs: dict[str, Optional[torch.Tensor]]  # static buffers: ids (B, n), mask (B, T) or None, start () long
    out: object  # the model's MaskPredictorOutput, whose tensors every replay rewrites


class GraphRunner:
    """The model's forward replayed from CUDA graphs, one graph per input shape, kept between calls.

    Call it as the model: ``runner(input_ids, attention_mask=..., compute_next=..., logits_from=...,
    use_cache=..., kv_cache=..., cache_start=...)``. ``replays`` counts passes served by a graph, ``eager``
    the others. At most ``max_graphs`` graphs are kept, the least recently used going first. A capture
    that fails is logged once, and every later pass runs eager. The runner holds the model weakly."""

    def __init__(self, model, capture: Optional[Capture] = None, max_graphs: int = MAX_GRAPHS):
        self._model = weakref.ref(model)
        self.capture = capture if capture is not None else cuda_capture  # looked up per runner (tests swap it)
        self.max_graphs = max_graphs
        self.graphs: OrderedDict[tuple, _Graph] = OrderedDict()
        self.cache: Optional[KVCache] = None  # the static cache every refill writes into
        self.pools: list = []  # the one memory pool of this runner's graphs, once made
        self.replays = 0
        self.eager = 0
        self.broken: Optional[str] = None  # why capturing failed (then everything runs eager)
        self.busy = threading.Lock()  # held by the generation call using the runner (acquire_forward)

    @property
    def model(self):
        model = self._model()
        if model is None:
            raise RuntimeError("the model of this GraphRunner no longer exists")
        return model

    def __call__(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                 compute_next: bool = True, logits_from: int = 0, use_cache: bool = False,
                 kv_cache: Optional[KVCache] = None, cache_start: int = 0):
        # An instrumented model (tests/benchmarks/gpu_decode.py) times whole passes, replays included.
        timer = getattr(self.model, "pass_timer", None)
        with timer(compute_next) if timer is not None else contextlib.nullcontext():
            return self._call(input_ids, attention_mask, compute_next, logits_from, use_cache, kv_cache, cache_start)

    def _call(self, input_ids, attention_mask, compute_next, logits_from, use_cache, kv_cache, cache_start):
        kind = "window" if kv_cache is not None else ("fill" if use_cache else "plain")
        kw = dict(attention_mask=attention_mask, compute_next=compute_next, logits_from=logits_from)
        if kind == "window" and kv_cache is not self.cache:  # a cache this runner did not fill: eager as given
            return self._eager(input_ids, kv_cache=kv_cache, cache_start=cache_start, **kw)
        if kind == "fill" and not self._cache_fits(input_ids):  # first fill: eager, lays out the static cache
            self.cache = KVCache(static=True)
            for key in [k for k in self.graphs if k[0] != "plain"]:  # graphs of the old cache go
                del self.graphs[key]
            return self._eager(input_ids, kv_cache=self.cache, use_cache=True, **kw)
        if self.replays + self.eager == 0 and kind == "plain":  # warm-up before the first capture
            return self._eager(input_ids, **kw)
        key = (kind, tuple(input_ids.shape), None if attention_mask is None else tuple(attention_mask.shape),
               compute_next, logits_from)
        graph = self.graphs.get(key)
        if graph is None and self.broken is None:
            graph = self._capture(kind, key, input_ids, attention_mask, compute_next, logits_from, cache_start)
        if graph is None:  # capturing failed, now or before
            cache_kw = {} if kind == "plain" else dict(kv_cache=self.cache, use_cache=kind == "fill",
                                                       cache_start=cache_start)
            return self._eager(input_ids, **cache_kw, **kw)
        self.graphs.move_to_end(key)
        graph.inputs["ids"].copy_(input_ids)
        if attention_mask is not None:
            graph.inputs["mask"].copy_(attention_mask)
        if kind == "window":
            graph.inputs["start"].fill_(cache_start)
        graph.replay()
        self.replays += 1
        return graph.out

    def _eager(self, input_ids, **kw):
        self.eager += 1
        return self.model(input_ids, **kw)

    def _cache_fits(self, input_ids: torch.Tensor) -> bool:
        keys = self.cache.keys if self.cache is not None else []
        return bool(keys) and tuple(keys[0].shape[::2]) == tuple(input_ids.shape)

    def _capture(self, kind, key, input_ids, attention_mask, compute_next, logits_from,
                 cache_start: int) -> Optional[_Graph]:
        """Build the static buffers of ``key`` and capture one forward on them -> the graph (None on failure)."""
        inputs = {"ids": input_ids.clone(), "start": torch.tensor(cache_start, device=input_ids.device),
                  "mask": None if attention_mask is None else attention_mask.clone()}
        model, cache, n = self.model, self.cache, input_ids.shape[1]

        def forward():
            kw = dict(attention_mask=inputs["mask"], compute_next=compute_next, logits_from=logits_from)
            if kind == "fill":
                kw.update(kv_cache=cache, use_cache=True)
            elif kind == "window":  # columns and positions from the start buffer: one graph follows the window
                cache.index = inputs["start"] + torch.arange(n, device=input_ids.device)
                positions = _window_positions(cache.index, inputs["mask"], input_ids.shape[0])
                kw.update(kv_cache=cache, position_ids=positions)
            try:
                return model(inputs["ids"], **kw)
            finally:
                if cache is not None:
                    cache.index = None

        while len(self.graphs) >= self.max_graphs:
            self.graphs.popitem(last=False)
        try:
            replay, out = self.capture(forward, self.pools)
        except Exception as err:  # never wrong results: say why once, then run eager
            self.broken = f"{type(err).__name__}: {err}"
            log.warning("CUDA graph capture of a %s pass %s failed, running eager from here: %s", kind, key[1:],
                        self.broken)
            return None
        log.debug("captured a CUDA graph for a %s pass %s", kind, key[1:])
        self.graphs[key] = graph = _Graph(replay, inputs, out)
        return graph


def _window_positions(index: torch.Tensor, mask: Optional[torch.Tensor], rows: int) -> torch.Tensor:
    """(B, n) position ids of the canvas columns ``index`` (n,): the columns themselves, or counted over the
    real tokens of the (B, T) mask; the values ``LLaDAModel._positions`` gives for a window at its start."""
    if mask is None:
        return index.expand(rows, -1)
    return (mask.long().cumsum(-1) - 1).clamp(min=0).index_select(1, index)


# One runner per model, kept between generation calls while the model's weights stay where they are.
_RUNNERS: "weakref.WeakKeyDictionary[object, tuple[tuple, GraphRunner]]" = weakref.WeakKeyDictionary()


def _fingerprint(model) -> tuple:
    """What a captured graph depends on besides its inputs: the weights' addresses and the kernel choices."""
    config = getattr(model, "config", None)
    return (tuple(p.data_ptr() for p in model.parameters()), getattr(config, "kernels", None),
            getattr(config, "attn_backend", None))


def runner_for(model) -> GraphRunner:
    """The model's graph runner, made on first use and made again when the model's parameters moved (a
    ``.to()``, a loaded state dict that replaced tensors) or its kernels changed: a graph reads memory by
    address, and would otherwise read weights that are gone. Weights changed in place need nothing."""
    fingerprint = _fingerprint(model)
    held = _RUNNERS.get(model)
    if held is None or held[0] != fingerprint:
        held = (fingerprint, GraphRunner(model))
        _RUNNERS[model] = held
    return held[1]


def acquire_forward(model):
    """The model's graph runner for one generation call, or the model itself (eager) while another call,
    in another thread, holds the runner: two calls replaying the same graphs would overwrite each other's
    inputs and outputs. Give it back with :func:`release_forward`."""
    runner = runner_for(model)
    if runner.busy.acquire(blocking=False):
        return runner
    log.debug("the model's CUDA graphs are in use by another generation call: this one runs eager")
    return model


def release_forward(call) -> None:
    """End the use of what :func:`acquire_forward` returned."""
    if isinstance(call, GraphRunner):
        call.busy.release()


def release_graphs(model) -> None:
    """Free the model's captured graphs, their memory pool and its static KV cache."""
    _RUNNERS.pop(model, None)
