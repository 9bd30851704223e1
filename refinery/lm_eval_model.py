"""A ``refinery`` model for lm-evaluation-harness: generation through the one decode loop, likelihoods by
LLaDA's Monte Carlo estimator.

    refinery lm-eval --model_args pretrained=DIR,strategy=edit,preset=paper,budget=1/8,gen_length=256 --tasks gsm8k

``generate_until``: each context becomes the user turn of the chat template (as ``refinery ablate`` renders a
task's prompt), batches of ``batch_size`` requests in the order lm-eval gives them go through
``core.decode.generate`` with the strategy entry, preset, budget and seed; the text is cut at the first
``until`` string. Model args this class does not know (e.g. ``cache=...``, ``edit_passes=4``) are the
strategy's parameters.

``loglikelihood``: a masked diffusion LM has no left-to-right factorisation, so log p(continuation | context)
is estimated the way LLaDA's evaluation does: mask k of the continuation's l tokens (k drawn uniformly from
1..l, stratified across a batch of samples), score the masked tokens with the model, and weight the summed
negative log-likelihood by l / k (the 1/t weighting of the diffusion ELBO with t = k / l); the mean over
``mc_num`` samples is an unbiased estimate of the ELBO bound, whose negation is returned.

Multi-process: launched by ``accelerate launch`` / ``torchrun`` (``RANK``/``WORLD_SIZE`` set), lm-eval hands
each rank its share of requests and gathers through the methods below (torch.distributed, gloo).
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

log = logging.getLogger(__name__)

_TYPES = dict(gen_length=int, batch_size=int, seed=int, mc_num=int, mc_batch=int)


@register_model("refinery")
class RefineryLM(LM):
    """lm-eval model over a refinery checkpoint and one strategy entry (see the module docstring)."""

    def __init__(self, pretrained: str = "embedded", strategy: str = "masked", preset: Optional[str] = None,
                 budget: str = "1/1", gen_length: int = 256, batch_size: int = 16, seed: int = 0,
                 device: Optional[str] = None, dtype: str = "fp32", mc_num: int = 128, mc_batch: int = 32,
                 **strategy_params) -> None:
        super().__init__()
        from refinery.core.checkpoint import load_model, parse_dtype, resolve_model_path
        from refinery.core.tokenizer import load_tokenizer
        from refinery.core.torchrun import ProcessLayout
        from refinery.strategies import get_strategy

        info = ProcessLayout.from_env()
        self._rank, self._world_size = info.rank, info.world
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if info.sharded and device.startswith("cuda"):  # one process per GPU: lm-eval's cuda:0 means "a GPU"
            device = f"cuda:{info.local_rank}"
        self._device = torch.device(device)
        strategy_params.pop("trust_remote_code", None)  # lm-eval's generic model arg; meaningless here
        self.strategy = get_strategy(strategy, preset=preset, **strategy_params)  # bad names fail before loading
        self.strategy_name, self.budget = strategy, str(budget)
        self.gen_length, self.batch_size_, self.seed = int(gen_length), int(batch_size), int(seed)
        self.mc_num, self.mc_batch = int(mc_num), int(mc_batch)
        path = resolve_model_path(pretrained)
        self.model = load_model(path, str(self._device), parse_dtype(dtype)).eval()
        self.tokenizer = load_tokenizer(path)
        self._path = str(path)
        if self._world_size > 1:
            _init_group(info)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: Optional[dict] = None) -> "RefineryLM":
        """``key=value,...`` -> the model (a budget such as ``1/8`` stays text)."""
        args = {}
        for part in filter(None, (arg_string or "").split(",")):
            key, sep, value = part.partition("=")
            if not sep:
                raise ValueError(f"--model_args: {part!r} is not key=value")
            args[key.strip()] = value.strip()
        return cls.create_from_arg_obj(args, additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: Optional[dict] = None) -> "RefineryLM":
        """lm-eval's entry point: ``--model_args`` win over its own ``--device`` / ``--batch_size``; other
        options of lm-eval's (max_batch_size, ...) mean nothing here. Under several processes each rank
        takes its own GPU (``cuda:LOCAL_RANK``)."""
        extra = {k: v for k, v in (additional_config or {}).items()
                 if k in ("device", "batch_size") and v is not None and str(v) != "auto"}
        if str(extra.get("device", "")).startswith("cuda") and not torch.cuda.is_available():
            extra.pop("device")  # lm-eval's default --device is cuda:0; on a host without CUDA, use the CPU
        return cls(**{k: _typed(k, v) for k, v in {**extra, **arg_dict}.items()})

    @property
    def tokenizer_name(self) -> str:
        return self._path

    # -- generation -------------------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Each request's ``args`` = (context, gen_kwargs with ``until``) -> the generated text."""
        out: list[str] = []
        for start in range(0, len(requests), self.batch_size_):
            chunk = requests[start:start + self.batch_size_]
            texts = self._generate([r.args[0] for r in chunk])
            for req, text in zip(chunk, texts):
                until = (req.args[1] or {}).get("until") or []
                for stop in [until] if isinstance(until, str) else until:
                    if stop and stop in text:
                        text = text[: text.index(stop)]
                out.append(text)
                self.cache_hook.add_partial("generate_until", req.args, text)
        return out

    @torch.no_grad()
    def _generate(self, contexts: list[str]) -> list[str]:
        from refinery.core.decode import generate
        from refinery.core.tokenizer import decode_response, render_prompt

        prompts = [render_prompt(self.tokenizer, [{"role": "user", "content": c}]) for c in contexts]
        res = generate(self.model, prompts, self.gen_length, self.strategy, self.budget, seed=self.seed,
                       record_trace=False)
        return [decode_response(self.tokenizer, res.tokens[b, : int(res.lengths[b])].tolist())
                for b in range(len(prompts))]

    # -- likelihoods ------------------------------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(context, continuation) -> (Monte Carlo estimate of log p(continuation | context), is_greedy);
        is_greedy is always False: a diffusion LM has no single greedy continuation to compare with."""
        out = []
        for req in requests:
            context, continuation = req.args
            ctx = self.tokenizer(context, add_special_tokens=False)["input_ids"]
            cont = self.tokenizer(continuation, add_special_tokens=False)["input_ids"]
            ll = mc_loglikelihood(self.model, ctx, cont, self.mc_num, self.mc_batch, self.seed)
            out.append((ll, False))
            self.cache_hook.add_partial("loglikelihood", req.args, (ll, False))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Whole-text likelihood: the text given an empty context."""
        return [mc_loglikelihood(self.model, [], self.tokenizer(r.args[0], add_special_tokens=False)["input_ids"],
                                 self.mc_num, self.mc_batch, self.seed) for r in requests]

    # -- several processes ------------------------------------------------------------------------------
    def all_gather(self, tensor):
        import torch.distributed as dist

        if self._world_size == 1:
            return tensor
        local = tensor.detach().cpu()  # the group is gloo, which gathers host tensors
        parts = [torch.zeros_like(local) for _ in range(self._world_size)]
        dist.all_gather(parts, local)
        return (torch.stack(parts) if local.dim() == 0 else torch.cat(parts)).to(tensor.device)

    def gather_object(self, obj, dst=0):
        import torch.distributed as dist

        if self._world_size == 1:
            return [obj]
        parts = [None] * self._world_size if self._rank == dst else None
        dist.gather_object(obj, parts, dst=dst)
        return parts

    def barrier(self) -> None:
        import torch.distributed as dist

        if self._world_size > 1:
            dist.barrier()


@torch.no_grad()
def mc_loglikelihood(model, context: list[int], continuation: list[int], mc_num: int = 128,
                     mc_batch: int = 32, seed: int = 0) -> float:
    """Monte Carlo ELBO estimate of log p(continuation | context) under a masked diffusion model.

    Each of ``mc_num`` samples masks k of the l continuation tokens (k stratified over 1..l within a
    batch of ``mc_batch`` samples, so one batch covers the masking ratios evenly); the context is never
    masked. The sample's loss is the cross-entropy summed over masked tokens times l / k."""
    l = len(continuation)
    if l == 0:
        return 0.0
    device = next(model.parameters()).device
    mask_id = int(model.config.mask_token_id)
    seq = torch.tensor(context + continuation, dtype=torch.long, device=device)
    target = seq[len(context):]
    gen = torch.Generator().manual_seed(seed)
    mc_batch = max(1, min(mc_batch, mc_num))
    losses = []
    for _ in range(max(1, mc_num // mc_batch)):
        first = int(torch.randint(0, l, (1,), generator=gen))
        k = (first + torch.arange(mc_batch) * l // mc_batch) % l + 1  # (mc_batch,) masked count per sample
        ranks = torch.rand(mc_batch, l, generator=gen).argsort(-1).argsort(-1)
        masked = (ranks < k[:, None]).to(device)  # (mc_batch, l): exactly k[i] True per row
        batch = seq.repeat(mc_batch, 1)
        batch[:, len(context):][masked] = mask_id
        logits = model(batch, logits_from=len(context)).logits  # (mc_batch, l, V)
        nll = torch.nn.functional.cross_entropy(logits.float()[masked], target.repeat(mc_batch, 1)[masked],
                                                reduction="none")
        row = torch.zeros(mc_batch, device=device).index_add_(0, masked.nonzero()[:, 0], nll)
        losses.append(row * l / k.to(device))
    return -float(torch.cat(losses).mean())


def _typed(key: str, value):
    """A model arg as its type: the known integer keys, then true/false and numbers; the rest stays text."""
    if not isinstance(value, str):
        return value
    if key in _TYPES:
        try:
            return _TYPES[key](value)
        except ValueError:
            raise ValueError(f"--model_args: {key}={value!r}: expected an integer") from None
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value  # text: paths, strategy and preset names, budgets such as 1/8


def _init_group(info) -> None:
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", rank=info.rank, world_size=info.world)
