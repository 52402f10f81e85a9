"""Masked-diffusion training of the reference models (LLaDA's SFT or pre-training objective).

For each example: draw ``t ~ U(ε, 1)``, replace every token of the noised region by the mask token
independently with probability ``t`` (at least one), and take the cross-entropy of the masked tokens weighted by
``1/t``, summed and divided by the number of region tokens in the batch. The region is the answer (SFT: the
prompt is never masked) or, with ``mask_prompt``, every position but the first (pre-training, which supervises
the prompt's tokens too: about seven times the supervised tokens per example on the code task). With suffix
masking (``suffix_mask_fraction``, from ``suffix_mask_start`` on), that share of rows instead masks a random
suffix of the region (cut ``c ~ U{0, …, R−1}``, positions ``≥ c`` masked, ``t = (R − c)/R``): the state a
left-to-right or semi-autoregressive decoder is in, where a token that reappears later in the answer cannot be
copied from there (an augmentation of this project's, not LLaDA's objective). LLaDA-style
models predict token ``i`` at output ``i``; Dream-style models at output ``i − 1`` (the adapter's logit shift).

Determinism and resumption: the batch of step ``s`` (examples, ``t`` and masks) is a function of ``(seed, s)``
only, and the state saved every ``checkpoint_every`` steps holds the model, the optimizer and the step, so a run
resumed from a checkpoint continues exactly as the uninterrupted run would (tested).

Command line::

    python -m fair_calib_hf.zoo.train llada-arith --work runs/llada-arith [--max-steps N] [--out DIR]
    python -m fair_calib_hf.zoo.train llada-arith --work runs/llada-arith --export --out DIR   # the state as it stands
"""
from __future__ import annotations

import argparse
import math
import os
import random
import time
from dataclasses import asdict

import torch
import torch.nn.functional as F

from ..reference_models import build_tokenizer, tiny_config, _FAMILIES
from .recipes import TrainConfig
from .tasks import get_task
from . import PREFIX


def build_model(cfg: TrainConfig):
    """A freshly initialised model of ``cfg.kind`` (``model._init_weights`` under ``torch.manual_seed(cfg.seed)``),
    or, with ``cfg.init_from``, that zoo model's weights (``ValueError`` if its architecture is not ``cfg.model``)."""
    config = tiny_config(cfg.kind, **cfg.model)
    model_cls = _FAMILIES[cfg.kind][1]
    with torch.random.fork_rng(devices=[]):
        model = model_cls(config)
        torch.manual_seed(cfg.seed)
        with torch.no_grad():
            for module in model.modules():
                model._init_weights(module)
    if cfg.init_from:
        from safetensors.torch import load_file
        from . import recipe_of, resolve

        source = recipe_of(PREFIX + cfg.init_from)
        if source is None or source["kind"] != cfg.kind or source["model"] != cfg.model:
            raise ValueError(f"init_from={cfg.init_from!r} is not a zoo {cfg.kind} model with the architecture "
                             f"{cfg.model}; train it first or change the recipe")
        state = load_file(os.path.join(resolve(PREFIX + cfg.init_from), "model.safetensors"))
        missing, unexpected = model.load_state_dict(state, strict=False)
        tied = {n for n in missing if "lm_head" in n or "embed" in n}
        if set(missing) - tied or unexpected:
            raise ValueError(f"init_from={cfg.init_from!r}: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    return model


def make_batch(task, tokenizer, cfg: TrainConfig, step: int, mask_id: int):
    """The step's ``(inputs [B, P+G], targets [B, R], masked [B, R] bool, t [B])``, where the noised region is
    the last ``R`` positions: the answer (``R = G``) or, with ``cfg.mask_prompt``, all but the first position
    (``R = P + G − 1``). Deterministic in ``(cfg.seed, step)``."""
    level = min(1.0, step / max(1.0, cfg.curriculum_fraction * cfg.steps))
    rng = random.Random(f"{cfg.seed}|{step}")
    examples = []
    while len(examples) < cfg.batch_size:
        examples.extend(task.examples("train", cfg.batch_size - len(examples), seed=rng.randrange(2**62), level=level))
    prompts, answers = task.encode(examples, tokenizer)
    if cfg.mask_prompt:
        full = torch.cat([prompts, answers], 1)
        prompts, answers = full[:, :1], full[:, 1:]
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    b, g = answers.shape
    t = cfg.t_eps + (1 - cfg.t_eps) * torch.rand(b, generator=gen)
    masked = torch.rand(b, g, generator=gen) < t[:, None]
    empty = ~masked.any(1)
    masked[empty, torch.randint(0, g, (int(empty.sum()),), generator=gen)] = True
    share = cfg.suffix_masking_at(step)
    if share > 0:  # its own generator: the other rows stay those of the plain recipe
        suffix_gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step + 2**40)
        rows = torch.rand(b, generator=suffix_gen) < share
        cut = torch.randint(0, g, (b,), generator=suffix_gen)
        masked = torch.where(rows[:, None], torch.arange(g)[None] >= cut[:, None], masked)
        t = torch.where(rows, (g - cut).to(t.dtype) / g, t)
    inputs = torch.cat([prompts, answers.masked_fill(masked, mask_id)], 1)
    return inputs, answers, masked, t


def diffusion_loss(model, inputs, targets, masked, t, shift: int) -> torch.Tensor:
    """``Σ_masked CE / t`` divided by the number of noised-region tokens (see the module docstring)."""
    g = targets.shape[1]
    p = inputs.shape[1] - g
    logits = model(input_ids=inputs).logits[:, p - shift: p - shift + g]
    ce = F.cross_entropy(logits[masked].float(), targets[masked], reduction="none")
    weights = (1.0 / t)[:, None].expand_as(masked)[masked]
    return (ce * weights).sum() / targets.numel()


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate of ``step`` (0-based): linear warm-up then cosine decay within the cycle that contains
    ``step`` (the first from step 0 at ``cfg.lr``, then one per ``cfg.restarts`` entry)."""
    cycles = [(0, cfg.lr), *cfg.restarts]
    index = max(i for i, (start, _) in enumerate(cycles) if start <= step)
    start, peak = cycles[index]
    end = cycles[index + 1][0] if index + 1 < len(cycles) else cfg.steps
    local = step - start
    if local < cfg.warmup_steps:
        return peak * (local + 1) / cfg.warmup_steps
    progress = (local - cfg.warmup_steps) / max(1, end - start - cfg.warmup_steps)
    return peak * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _continues(saved: dict, cfg: TrainConfig, step: int) -> bool:
    """Whether a state written at ``step`` by the recipe ``saved`` (a ``TrainConfig`` as a dict) is a prefix of
    ``cfg``'s run: every field equal but ``steps``, ``restarts`` and the suffix masking, and the same rate and
    the same suffix-masking share at every step it ran (e.g. a finished run continued by a warm restart, or
    suffix masking switched on from the saved step)."""
    before = TrainConfig(**saved)  # fields it predates take their defaults
    free = ("steps", "restarts", "suffix_mask_fraction", "suffix_mask_start")
    if {k: v for k, v in asdict(before).items() if k not in free} != \
            {k: v for k, v in asdict(cfg).items() if k not in free}:
        return False
    return step <= cfg.steps and all(lr_at(before, s) == lr_at(cfg, s) and
                                     before.suffix_masking_at(s) == cfg.suffix_masking_at(s) for s in range(step))


def _save_state(path: str, model, optimizer, step: int, cfg: TrainConfig, history: list) -> None:
    tmp = path + ".tmp"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "config": asdict(cfg), "history": history}, tmp)
    os.replace(tmp, path)


def _load_state(state_path: str, cfg: TrainConfig) -> dict:
    """The training state at ``state_path``; ``ValueError`` unless ``cfg`` is the recipe that wrote it or one
    that continues it (:func:`_continues`)."""
    state = torch.load(state_path, map_location="cpu", weights_only=False)
    if state["config"] != asdict(cfg) and not _continues(state["config"], cfg, state["step"]):
        raise ValueError(f"{state_path} was written by a different TrainConfig (not one this recipe continues: "
                         "same fields but steps/restarts/suffix masking, same rate and masking at every step run); "
                         "use another --work folder")
    return state


def load_trained_state(cfg: TrainConfig, work_dir: str):
    """The model of the training state in ``work_dir`` as it stands (an intermediate one while a run goes on, for
    probing it), its loss history and its step: ``(model in eval mode, history, step)``. The history's last entry
    can be older than ``step`` when the run stopped between a checkpoint and the next log line.
    ``FileNotFoundError`` when ``work_dir`` holds no ``state.pt``; ``ValueError`` as :func:`train` when ``cfg``
    does not continue that state."""
    state_path = os.path.join(work_dir, "state.pt")
    if not os.path.exists(state_path):
        raise FileNotFoundError(f"{state_path} does not exist: --work must be the folder a training run wrote")
    state = _load_state(state_path, cfg)
    model = build_model(cfg)
    model.load_state_dict(state["model"])
    return model.eval(), state["history"], state["step"]


def train(cfg: TrainConfig, work_dir: str, max_steps: int | None = None, log=print):
    """Train (or resume, from ``work_dir/state.pt``) and return ``(model, history)``; ``max_steps`` stops early
    (for tests and time-boxed runs) with the state saved, so a later call resumes."""
    from ..architectures import get_adapter

    os.makedirs(work_dir, exist_ok=True)
    task = get_task(cfg.task, **cfg.task_options)
    tokenizer = build_tokenizer(cfg.kind)
    model = build_model(cfg).train()
    adapter = get_adapter(model)
    mask_id = adapter.mask_token_id(model.config)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    state_path = os.path.join(work_dir, "state.pt")
    step, history = 0, []
    if os.path.exists(state_path):
        state = _load_state(state_path, cfg)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, history = state["step"], state["history"]
        log(f"resumed {cfg.kind}/{cfg.task} at step {step}")
    end = cfg.steps if max_steps is None else min(cfg.steps, max_steps)
    start_time, running = time.time(), []
    while step < end:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(cfg, step)
        inputs, targets, masked, t = make_batch(task, tokenizer, cfg, step, mask_id)
        loss = diffusion_loss(model, inputs, targets, masked, t, adapter.logits_shift)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        step += 1
        running.append(loss.item())
        if step % cfg.log_every == 0 or step == end:
            mean = sum(running) / len(running)
            elapsed = time.time() - start_time
            history.append({"step": step, "loss": mean, "seconds": round(elapsed, 2)})
            rate = elapsed / len(running)
            log(f"{cfg.kind}/{cfg.task} step {step}/{cfg.steps} loss {mean:.4f} lr {lr_at(cfg, step - 1):.2e} "
                f"{rate:.2f} s/step", flush=True)
            running, start_time = [], time.time()
        if step % cfg.checkpoint_every == 0 or step == end:
            _save_state(state_path, model, optimizer, step, cfg, history)
    return model.eval(), history


def main(argv=None) -> None:
    from . import save_reference_model
    from .recipes import RECIPES

    parser = argparse.ArgumentParser(prog="python -m fair_calib_hf.zoo.train", description=__doc__.split("\n")[0])
    parser.add_argument("name", choices=sorted(RECIPES), help="reference model recipe")
    parser.add_argument("--work", required=True, help="folder for the resumable training state")
    parser.add_argument("--out", help="where to write the trained checkpoint (default: the package's zoo folder)")
    parser.add_argument("--max-steps", type=int, help="stop after this step (resume later)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads")
    parser.add_argument("--export", action="store_true",
                        help="train nothing: write the state in --work as it stands (an intermediate checkpoint, "
                             "e.g. of a running training) to --out, which it needs")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = RECIPES[args.name]
    if args.export:
        if not args.out:
            parser.error("--export needs --out DIR (an intermediate checkpoint does not belong in the package's zoo)")
        model, history, step = load_trained_state(cfg, args.work)
        path = save_reference_model(args.name, model, cfg, history, args.out)
        print(f"saved {args.name} at step {step} to {path}")
        return
    model, history = train(cfg, args.work, max_steps=args.max_steps)
    if history and history[-1]["step"] == cfg.steps:
        path = save_reference_model(args.name, model, cfg, history, args.out)
        print(f"saved {args.name} to {path}")


if __name__ == "__main__":
    main()
