"""lm-evaluation-harness model for diffusion LMs, float or fair_calib-quantized: ``fair_calib_dllm``.

Importing this module registers the model name with ``lm_eval`` (it also imports ``fair_calib_hf``, so
quantized checkpoints load)::

    import fair_calib_hf.lm_eval_model  # registers "fair_calib_dllm"
    import lm_eval
    lm_eval.simple_evaluate(model="fair_calib_dllm",
                            model_args="pretrained=llada-w4a4,gen_length=256,steps=256,block_length=32",
                            tasks=["gsm8k"])

or from the shell, the way the dLLM papers run the harness::

    python -m fair_calib_hf.lm_eval_model --model fair_calib_dllm \\
        --model_args pretrained=llada-w4a4,mc_num=128 --tasks gsm8k,arc_challenge

* ``generate_until``: :func:`fair_calib_hf.decoding.diffusion_generate` with the given policy
  (``low_confidence`` semi-autoregressive blocks by default for LLaDA-style models, ``maskgit_plus`` for
  Dream-style), ``gen_length`` tokens (``max_gen_toks`` of the request when it is smaller), the text cut at the
  first stop token and at the first ``until`` string.
* ``loglikelihood``: LLaDA's Monte-Carlo masked estimator (:func:`fair_calib_hf.decoding.mc_log_likelihood`,
  ``mc_num`` draws, seeded per request); ``is_greedy`` is whether the answer is the argmax at every answer
  position when all of them are masked (one forward).
* ``loglikelihood_rolling``: the same estimator for the whole text given the BOS token.
* ``apply_chat_template=True`` (instruct / chat models): each request is rendered by the tokenizer's chat
  template (``apply_chat_template``, ``chat_template`` and ``tokenizer_name``, as lm-eval's own Hugging Face
  model does); a prompt that already starts with the BOS token gets no second one. A tokenizer without a chat
  template is refused with a ``ValueError`` on the first request, before any decoding.

Inputs longer than the model's positions (LLaDA ``max_sequence_length``, Dream ``max_position_embeddings``)
are handled as lm-eval's own Hugging Face model handles them: ``loglikelihood_rolling`` sums the estimator over
the disjoint rolling windows of ``lm_eval.utils.get_rolling_token_windows`` (one token of context each; a
window and its context fill the model's positions exactly); ``generate_until`` and ``loglikelihood`` cut the
context from the left (a warning is logged) to leave room for ``gen_length`` / the continuation; a
continuation that alone does not fit raises ``ValueError``.

Model arguments: ``pretrained`` (folder, hub id or ``zoo:NAME``), ``dtype`` (auto), ``device`` (cpu / cuda;
a device this torch does not have, such as the harness's default ``cuda:0`` on a CPU-only build, falls back
to CPU with a warning), ``trust_remote_code`` (true), ``gen_length`` (64), ``steps`` (= gen_length),
``block_length`` (8 for LLaDA-style when it divides gen_length, else gen_length), ``policy``, ``temperature``
(0), ``mc_num`` (32), ``mc_batch_size`` (mc_num), ``seed`` (0), ``add_bos`` (true), ``batch_size``,
``zoo_task`` (``arith`` / ``code``), ``tokenizer`` (a folder or hub id; default: the model's).

Zoo models (:mod:`fair_calib_hf.zoo`) were trained on one fixed prompt layout: ``prompt_width`` tokens, BOS then
the prompt text, **left-padded with EOS**, no attention mask (:mod:`fair_calib_hf.zoo.tasks`); with the generic
layout (unpadded, masked) they decode garbage. A zoo folder (``zoo:NAME``, or any folder with the zoo's
``training.json``) gets that layout and its task's decoding (:func:`fair_calib_hf.zoo.evaluate.default_decode_config`)
automatically, so the harness scores what ``fair-calib eval`` scores; a quantized copy of a zoo model saved by
this version carries the recipe too (:func:`fair_calib_hf.saving.copy_zoo_recipe`); for an older copy pass
``zoo_task=arith`` (or ``code``). A context longer than ``prompt_width − 1`` tokens is
refused, naming the layout.
"""
from __future__ import annotations

import logging
import os
import warnings

import torch
from lm_eval.api.model import LM, TemplateLM
from lm_eval.api.registry import register_model

import fair_calib_hf  # noqa: F401  (registers the quantizer: quantized checkpoints must load)

from .architectures import get_adapter
from .decoding import DecodeConfig, diffusion_generate, left_pad, mc_log_likelihood

MODEL_NAME = "fair_calib_dllm"
logger = logging.getLogger(__name__)


def _bool(v) -> bool:
    return v if isinstance(v, bool) else str(v).lower() in ("1", "true", "yes")


def available_device(device) -> torch.device:
    """``device`` if this torch can use it, else CPU with a ``UserWarning`` (lm-eval passes ``cuda:0`` by
    default; its own HF model falls back the same way). A CUDA index beyond ``torch.cuda.device_count()`` and
    an MPS device without MPS support count as unavailable."""
    wanted = torch.device(device)
    if wanted.type == "cuda":
        ok = torch.cuda.is_available() and (wanted.index or 0) < torch.cuda.device_count()
    elif wanted.type == "mps":
        ok = bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    else:
        ok = True
    if ok:
        return wanted
    warnings.warn(f"{MODEL_NAME}: device {device!r} is not available in this torch build; using cpu",
                  stacklevel=3)
    return torch.device("cpu")


def zoo_layout(path: str, zoo_task=None):
    """The zoo :class:`~fair_calib_hf.zoo.tasks.Task` whose prompt layout and decoding ``path`` needs: the one
    named by ``zoo_task``, else the task a zoo folder was trained on, else ``None`` (generic layout)."""
    from .zoo import task_of
    from .zoo.tasks import get_task

    if zoo_task not in (None, "", "None"):
        return get_task(str(zoo_task))
    return task_of(path) if isinstance(path, str) and os.path.isdir(path) else None


@register_model(MODEL_NAME)
class FairCalibDLLM(LM):
    """A diffusion LM (LLaDA- or Dream-style, float or W4A4) behind the harness's ``LM`` interface."""

    def __init__(self, pretrained=None, model=None, tokenizer=None, dtype="auto", device=None,
                 trust_remote_code=True, gen_length=None, steps=None, block_length=None, policy=None,
                 temperature=0.0, mc_num=32, mc_batch_size=None, seed=0, add_bos=True, batch_size=1,
                 max_batch_size=None, zoo_task=None, **kwargs):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        path = None
        if model is None:
            if pretrained is None:
                raise ValueError(f"{MODEL_NAME}: pass model_args pretrained=PATH (a folder, hub id or zoo:NAME)")
            from .zoo import resolve

            path = resolve(str(pretrained))
            kw = {"trust_remote_code": _bool(trust_remote_code)}
            if dtype not in (None, "auto"):
                from .dtypes import float_dtype

                kw["dtype"] = float_dtype(dtype)
            model = AutoModel.from_pretrained(path, **kw)
            tokenizer = tokenizer or path
        if isinstance(tokenizer, str):
            tokenizer = AutoTokenizer.from_pretrained(tokenizer, trust_remote_code=_bool(trust_remote_code))
        if tokenizer is None:
            raise ValueError(f"{MODEL_NAME}: a model object needs its tokenizer too")
        if device:
            model.to(available_device(device))
        self.model, self.tokenizer = model.eval(), tokenizer
        self.adapter = get_adapter(model)
        self.zoo_task = zoo_layout(path, zoo_task)
        if self.zoo_task is not None:  # the task's own decoding unless overridden
            from .zoo.evaluate import default_decode_config

            zoo_cfg = default_decode_config(self.zoo_task, self.adapter.family)
            gen_length = gen_length if gen_length is not None else zoo_cfg.gen_length
            steps = steps if steps is not None else zoo_cfg.steps
            block_length = block_length if block_length is not None else zoo_cfg.block_length
            policy = policy or zoo_cfg.policy
        self.gen_length = int(gen_length) if gen_length is not None else 64
        self.steps = int(steps) if steps is not None else None
        self.block_length = int(block_length) if block_length not in (None, "None") else None
        self.policy = policy or ("low_confidence" if self.adapter.family == "llada" else "maskgit_plus")
        self.temperature = float(temperature)
        self.mc_num = int(mc_num)
        self.mc_batch_size = int(mc_batch_size) if mc_batch_size else self.mc_num
        self.seed = int(seed)
        self.add_bos = _bool(add_bos)
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 1
        self.stop_ids = self.adapter.stop_token_ids(model.config, tokenizer)

    # -- helpers ---------------------------------------------------------------------------------------
    @property
    def tokenizer_name(self) -> str:
        return getattr(self.tokenizer, "name_or_path", "tokenizer").replace("/", "__")

    def _encode(self, text: str, bos: bool) -> list[int]:
        """Token ids of ``text``, with the BOS token first when ``bos`` (once: a chat-templated text may start
        with it already)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        bos_id = self.tokenizer.bos_token_id
        if bos and bos_id is not None and ids[:1] != [bos_id]:
            ids = [bos_id] + ids
        return ids

    def _require_chat_template(self) -> None:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(
                f"{MODEL_NAME}: apply_chat_template was asked, but the tokenizer "
                f"{getattr(self.tokenizer, 'name_or_path', '')!r} has no chat template (a base model, not an "
                f"instruct/chat one): run without apply_chat_template, or pass model_args tokenizer=PATH of a "
                f"tokenizer that has one")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        """The chat template lm-eval records (lm-eval's own selection: ``True`` → the tokenizer's template, a
        name → that entry of a dict of templates). ``ValueError`` when the tokenizer has none."""
        if chat_template not in (False, None):
            self._require_chat_template()
        return TemplateLM.chat_template(self, chat_template)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """``chat_history`` (``[{"role", "content"}, ...]``) rendered as one prompt string by the tokenizer's
        chat template, ending with the assistant's turn opened (``add_generation_prompt``) or the last message
        continued. ``ValueError`` when the tokenizer has no chat template."""
        self._require_chat_template()
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt,
                                                  continue_final_message=not add_generation_prompt)

    @property
    def max_length(self) -> int | None:
        """Positions one forward may cover (the model config's), ``None`` if the config does not say."""
        return self.adapter.max_positions(self.model.config)

    def _left_truncate(self, ids: list[int], room: int, what: str) -> list[int]:
        """``ids`` cut from the left to ``room`` tokens (lm-eval's left truncation), with a warning."""
        if room < 1:
            raise ValueError(f"{MODEL_NAME}: {what} leaves no room for a context in the model's "
                             f"{self.max_length} positions")
        if len(ids) > room:
            logger.warning("%s: context of %d tokens cut from the left to its last %d (model positions %d)",
                           MODEL_NAME, len(ids), room, self.max_length)
            return ids[-room:]
        return ids

    def _prompt_batch(self, contexts: list[str], gen_length: int | None = None):
        """``(input_ids [B, W], attention_mask [B, W] or None, W)`` of the contexts: left-padded and masked
        (generic, :func:`~fair_calib_hf.decoding.left_pad`; with ``gen_length``, each context cut from the left to
        leave ``gen_length`` of the model's positions), or a zoo task's layout (``W = prompt_width``, BOS + text
        left-padded with EOS, no mask)."""
        task = self.zoo_task
        rows = [self._encode(c, self.add_bos or task is not None) for c in contexts]
        if task is not None:
            too_long = [c for c, r in zip(contexts, rows) if len(r) > task.prompt_width]
            if too_long:
                raise ValueError(f"{MODEL_NAME}: zoo task {task.name!r} models take prompts of at most "
                                 f"{task.prompt_width - 1} tokens after BOS (layout: BOS + text, left-padded with "
                                 f"EOS to {task.prompt_width}); got {too_long[0]!r}")
            from .zoo.tasks import Example

            ids, _ = task.encode([Example(c, "", "") for c in contexts], self.tokenizer)  # the one layout source
            return ids, None, task.prompt_width
        if self.max_length is not None and gen_length is not None:
            rows = [self._left_truncate(r, self.max_length - gen_length, f"gen_length {gen_length}") for r in rows]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        ids, mask = left_pad(rows, pad)
        return ids, mask, ids.shape[1]

    def _decode_config(self, gen_length: int) -> DecodeConfig:
        steps = min(self.steps or gen_length, gen_length)
        block = self.block_length
        if self.policy in ("low_confidence", "random", "threshold"):
            if block is None or gen_length % block:
                block = 8 if gen_length % 8 == 0 and self.adapter.family == "llada" else gen_length
            blocks = gen_length // block
            if steps % blocks:
                steps = max(blocks, steps - steps % blocks)
        else:
            block = None
        return DecodeConfig(gen_length=gen_length, steps=steps, block_length=block, policy=self.policy,
                            temperature=self.temperature, seed=self.seed, record=False,
                            confidence_eos_eot_inf=True)

    # -- harness API -----------------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from tqdm import tqdm

        out = []
        for start in tqdm(range(0, len(requests), self.batch_size), disable=disable_tqdm, desc=f"{MODEL_NAME} generate"):
            chunk = requests[start:start + self.batch_size]
            contexts = [r.args[0] for r in chunk]
            kwargs = [dict(r.args[1]) if len(r.args) > 1 and r.args[1] else {} for r in chunk]
            gen_length = min([self.gen_length] + [int(k["max_gen_toks"]) for k in kwargs if "max_gen_toks" in k])
            ids, mask, width = self._prompt_batch(contexts, gen_length)
            result = diffusion_generate(self.model, ids, mask, self._decode_config(gen_length), adapter=self.adapter)
            for row, kw in zip(result.sequences[:, width:].tolist(), kwargs):
                cut = next((i for i, t in enumerate(row) if t in self.stop_ids), len(row))
                text = self.tokenizer.decode(row[:cut], skip_special_tokens=True)
                until = kw.get("until") or []
                for stop in [until] if isinstance(until, str) else until:
                    if stop and stop in text:
                        text = text.split(stop, 1)[0]
                out.append(text)
        return out

    @torch.no_grad()
    def _is_greedy(self, prompt: torch.Tensor, answer: torch.Tensor) -> bool:
        mask_id = self.adapter.mask_token_id(self.model.config)
        device = self.model.get_input_embeddings().weight.device
        x = torch.cat([prompt, torch.full_like(answer, mask_id)])[None].to(device)
        lo = prompt.numel() - self.adapter.logits_shift
        logits = self.model(input_ids=x).logits[0, lo:lo + answer.numel()]
        return bool((logits.argmax(-1).cpu() == answer).all())

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        from tqdm import tqdm

        out = []
        for index, req in enumerate(tqdm(requests, disable=disable_tqdm, desc=f"{MODEL_NAME} loglikelihood")):
            context, continuation = req.args[0], req.args[1]
            # keep a leading space with the continuation, as the harness's own models do
            stripped = len(context) - len(context.rstrip())
            if stripped:
                context, continuation = context[:-stripped], context[-stripped:] + continuation
            prompt = torch.tensor(self._encode(context, self.add_bos), dtype=torch.long)
            if self.zoo_task is not None:  # the zoo layout (BOS, EOS left padding), as trained
                prompt = self._prompt_batch([context])[0][0]
            answer = torch.tensor(self._encode(continuation, False), dtype=torch.long)
            if prompt.numel() == 0:
                prompt = torch.tensor([self.tokenizer.bos_token_id or self.tokenizer.eos_token_id])
            if answer.numel() == 0:
                out.append((0.0, True))
                continue
            if self.max_length is not None:
                if answer.numel() >= self.max_length:
                    raise ValueError(f"{MODEL_NAME}: a continuation of {answer.numel()} tokens does not fit in the "
                                     f"model's {self.max_length} positions with any context")
                prompt = torch.tensor(self._left_truncate(prompt.tolist(), self.max_length - answer.numel(),
                                                          f"a continuation of {answer.numel()} tokens"))
            ll = mc_log_likelihood(self.model, prompt, answer, mc_num=self.mc_num, batch_size=self.mc_batch_size,
                                   seed=self.seed + index, adapter=self.adapter)
            out.append((ll, self._is_greedy(prompt, answer)))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        out = []
        for index, req in enumerate(requests):
            bos = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.tokenizer.eos_token_id
            tokens = self._encode(req.args[0], False)
            # a window of n predicted tokens runs with its context in one forward: n + context ≤ max_length
            window = max(len(tokens), 1) if self.max_length is None else self.max_length - 1
            total = 0.0
            for w, (context, pred) in enumerate(map(make_disjoint_window, get_rolling_token_windows(
                    token_list=tokens, prefix_token=bos, max_seq_len=window, context_len=1))):
                total += mc_log_likelihood(self.model, torch.tensor(context), torch.tensor(pred), mc_num=self.mc_num,
                                           batch_size=self.mc_batch_size, seed=self.seed + index + 100_003 * w,
                                           adapter=self.adapter)
            out.append(total)
        return out


def main() -> None:
    """``python -m fair_calib_hf.lm_eval_model ...``: the harness CLI with ``fair_calib_dllm`` registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
