"""Task families the reference models are trained and scored on, with disjoint train / calibration / test splits.

Every example is a fixed-width pair ``(prompt, answer)`` of token ids, what a model sees when it decodes:

* ``prompt``: ``prompt_width`` tokens, the BOS token then the prompt text, **left-padded with EOS tokens**
  (the models are trained with the padding visible, so no attention mask is needed anywhere: decoding,
  calibration and likelihood see exactly the training layout);
* ``answer``: ``gen_length`` tokens, the answer text, the end-of-turn token, then EOS padding (as in LLaDA's
  SFT data, where the padding EOS tokens are part of the answer).

Splits are decided by a hash of the example's text (``sha256`` of ``"task|prompt|answer"`` → bucket 0–99:
train < 80 ≤ calibration < 90 ≤ test), so a text belongs to one split whatever the generator's seed, and the
splits can never overlap.

Families:

* ``arith`` — a GSM8K analogue: ``"47+8-6+3="``, a two-digit number then three single-digit additions or
  subtractions, answered by a worked solution and a final answer, ``"47+8=55;55-6=49;49+3=52;#52"``. Scored by exact
  match of the final answer (the text after ``#``). A flipped digit anywhere in the chain changes it.
* ``code`` — completion of Python source lines taken from the running interpreter's standard library (present
  offline on every machine): the prompt is up to ``prompt_width − 1`` characters before the cut, the answer the
  last ``answer_chars`` characters of the line. Scored by exact match of the completed span and by Monte-Carlo
  masked likelihood.
"""
from __future__ import annotations

import glob
import hashlib
import inspect
import os
import random
import sys
from dataclasses import dataclass

import torch

END_OF_TURN_TOKENS = ("<|eot_id|>", "<|im_end|>")
SPLITS = ("train", "calibration", "test")
_SPLIT_BUCKETS = {"train": (0, 80), "calibration": (80, 90), "test": (90, 100)}


def split_of(task: str, prompt: str, answer: str) -> str:
    """The split a text belongs to (see the module docstring)."""
    digest = hashlib.sha256(f"{task}|{prompt}|{answer}".encode()).digest()
    bucket = int.from_bytes(digest[:4], "big") % 100
    for name, (lo, hi) in _SPLIT_BUCKETS.items():
        if lo <= bucket < hi:
            return name
    raise AssertionError(bucket)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")


@dataclass(frozen=True)
class Example:
    """One problem: ``prompt`` and ``answer`` texts, and the ``reference`` the score compares against."""

    prompt: str
    answer: str
    reference: str


class Task:
    """Base class: text generation, split filtering, encoding to fixed-width tensors, scoring."""

    name = "task"
    prompt_width = 16
    gen_length = 32

    def sample(self, rng: random.Random, level: float = 1.0) -> Example:  # pragma: no cover - abstract
        raise NotImplementedError

    def score(self, prediction: str, example: Example) -> bool:
        """Whether the decoded answer text (cut at the first stop token) is correct."""
        raise NotImplementedError  # pragma: no cover - abstract

    def accuracy(self, predictions: list[str], examples: list[Example]) -> float:
        """Fraction of ``predictions`` (decoded answer texts) that :meth:`score` counts correct."""
        return sum(map(self.score, predictions, examples)) / len(examples)

    def split_key(self, example: Example) -> tuple[str, str, str]:
        """The ``(task, prompt, answer)`` texts whose hash decides ``example``'s split (:func:`split_of`)."""
        return self.name, example.prompt, example.answer

    def examples(self, split: str, count: int, seed: int = 0, level: float = 1.0) -> list[Example]:
        """``count`` distinct examples of ``split`` (distinct by :meth:`split_key`), drawn with ``seed``
        (deterministic)."""
        _check_split(split)
        rng = random.Random(f"{self.name}|{split}|{seed}")
        seen, out = set(), []
        attempts = 0
        while len(out) < count:
            attempts += 1
            if attempts > 200 * count + 10_000:
                raise ValueError(f"task {self.name!r}: split {split!r} has fewer than {count} distinct examples")
            ex = self.sample(rng, level)
            key = self.split_key(ex)
            if key in seen or split_of(*key) != split:
                continue
            seen.add(key)
            out.append(ex)
        return out

    def encode(self, examples: list[Example], tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
        """``(prompts [N, prompt_width], answers [N, gen_length])`` int64 (layout in the module docstring)."""
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (tokenizer.bos_token, tokenizer.eos_token)}
        bos, eos = ids[tokenizer.bos_token], ids[tokenizer.eos_token]
        eot = end_of_turn_id(tokenizer)
        prompts = torch.full((len(examples), self.prompt_width), eos, dtype=torch.long)
        answers = torch.full((len(examples), self.gen_length), eos, dtype=torch.long)
        for row, ex in enumerate(examples):
            p = [bos] + tokenizer(ex.prompt, add_special_tokens=False)["input_ids"]
            a = tokenizer(ex.answer, add_special_tokens=False)["input_ids"] + [eot]
            if len(p) > self.prompt_width or len(a) > self.gen_length:
                raise ValueError(f"task {self.name!r}: example {ex.prompt!r} → {ex.answer!r} does not fit "
                                 f"prompt_width={self.prompt_width} / gen_length={self.gen_length}")
            prompts[row, self.prompt_width - len(p):] = torch.tensor(p)
            answers[row, : len(a)] = torch.tensor(a)
        return prompts, answers

    def calibration_sequences(self, tokenizer, count: int, seed: int = 0) -> list[list[int]]:
        """``count`` calibration-split sequences (prompt then answer, ``prompt_width + gen_length`` tokens each),
        ready for ``FairCalibConfig(calibration_dataset=..., seq_len=prompt_width + gen_length)``."""
        prompts, answers = self.encode(self.examples("calibration", count, seed), tokenizer)
        return torch.cat([prompts, answers], 1).tolist()


def end_of_turn_id(tokenizer) -> int:
    """The id of the tokenizer's end-of-turn token (LLaDA ``<|eot_id|>`` or Dream ``<|im_end|>``)."""
    vocab = tokenizer.get_vocab()
    for token in END_OF_TURN_TOKENS:
        if token in vocab:
            return vocab[token]
    raise ValueError(f"the tokenizer has none of the end-of-turn tokens {END_OF_TURN_TOKENS}")


class ArithmeticTask(Task):
    """Multi-step addition/subtraction with a worked solution (see the module docstring).

    A problem starts from a two-digit number and applies ``operands − 1`` single-digit additions or
    subtractions; the operation is chosen so that every intermediate result stays in [10, 99]. Every problem
    therefore has the same shape (prompt ``dd±d±d±d=``, answer ``dd±d=dd;dd±d=dd;dd±d=dd;#dd``): each answer
    position has a fixed role, which a small masked-diffusion model learns within the CPU budget (with a
    variable number of operands it did not: 3 % exact match after 1,000 steps). ``level`` is not used."""

    name = "arith"
    prompt_width = 12
    gen_length = 32
    operands = 4

    def sample(self, rng: random.Random, level: float = 1.0) -> Example:
        value = rng.randint(10, 99)
        prompt, steps = str(value), []
        for _ in range(self.operands - 1):
            operand = rng.randint(1, 9)
            ops = [op for op, ok in (("+", value + operand <= 99), ("-", value - operand >= 10)) if ok]
            op = rng.choice(ops)
            result = value + operand if op == "+" else value - operand
            prompt += f"{op}{operand}"
            steps.append(f"{value}{op}{operand}={result}")
            value = result
        return Example(prompt + "=", ";".join(steps) + f";#{value}", str(value))

    def score(self, prediction: str, example: Example) -> bool:
        return prediction.rsplit("#", 1)[-1].strip() == example.reference if "#" in prediction else False


class FewShotArithmeticTask(ArithmeticTask):
    """:class:`ArithmeticTask` in the few-shot layout of GSM8K evaluation: the prompt is ``shots`` solved problems
    (question then worked answer, one per line) followed by the question, e.g.
    ``"23+4-7+2=23+4=27;27-7=20;20+2=22;#22\\n…\\n47+8-6+3="``, and the answer is the question's worked solution.

    This puts calibration in the paper's regime (FAIR-Calib, Stage II: 1,024-token sequences whose trailing 256
    are the generation window): with 3 shots a calibration sequence is 156 tokens and the answer window 32 of
    them (20.5 %). The shots are drawn from the train split of ``arith``; the question decides the split, by
    the same hash as ``arith`` (:meth:`split_key`), so a test question is an ``arith`` test question and never
    appears in training, as question or as shot."""

    name = "arith-fewshot"
    shots = 3
    # 1 BOS + 3 shots × (9 question + 27 answer + 1 newline) + 9 question = 121, rounded up to 124
    prompt_width = 124
    gen_length = 32

    def __init__(self, min_shots: int | None = None, shots: int | None = None):
        """``min_shots``: draw each example's number of shots uniformly from ``min_shots … shots`` (the prompt
        stays ``prompt_width`` wide, left-padded), a training augmentation (:attr:`TrainConfig.task_options`);
        ``None`` (the default, and what calibration, test and every score use): always ``shots``.
        ``shots``: the number of solved problems (default and most: the class's 3, what the prompt width holds),
        e.g. to probe a model on the fewer-shot layouts ``min_shots`` trains on.
        ``ValueError`` for ``shots`` outside ``0 … 3`` or ``min_shots`` outside ``0 … shots``."""
        if shots is not None:
            if not 0 <= shots <= type(self).shots:
                raise ValueError(f"shots={shots!r} must be in 0 … {type(self).shots} "
                                 "(the prompt width holds no more)")
            self.shots = shots
        if min_shots is not None and not 0 <= min_shots <= self.shots:
            raise ValueError(f"min_shots={min_shots!r} must be in 0 … {self.shots} (or None for always {self.shots})")
        self.min_shots = min_shots

    def sample(self, rng: random.Random, level: float = 1.0) -> Example:
        question = ArithmeticTask.sample(self, rng, level)
        count = self.shots if self.min_shots is None else rng.randint(self.min_shots, self.shots)
        shots = []
        while len(shots) < count:
            shot = ArithmeticTask.sample(self, rng, level)
            if split_of(ArithmeticTask.name, shot.prompt, shot.answer) == "train" and shot.prompt != question.prompt:
                shots.append(shot)
        context = "".join(f"{shot.prompt}{shot.answer}\n" for shot in shots)
        return Example(context + question.prompt, question.answer, question.reference)

    def split_key(self, example: Example) -> tuple[str, str, str]:
        return ArithmeticTask.name, example.prompt.rsplit("\n", 1)[-1], example.answer


def stdlib_lines() -> list[str]:
    """ASCII source lines (16–72 characters, leading indentation kept, trailing space removed) of the top-level
    ``*.py`` modules of the running interpreter's standard library, in sorted-file order, deduplicated."""
    folder = os.path.dirname(os.__file__)
    seen, lines = set(), []
    for path in sorted(glob.glob(os.path.join(folder, "*.py"))):
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                line = line.rstrip()
                if not (16 <= len(line) <= 72) or not line.isascii() or "\t" in line or line in seen:
                    continue
                if line.lstrip().startswith("#"):
                    continue
                seen.add(line)
                lines.append(line)
    return lines


class CodeCompletionTask(Task):
    """Completion of the last ``answer_chars`` characters of a standard-library source line."""

    name = "code"
    prompt_width = 48
    gen_length = 8
    answer_chars = 6

    def __init__(self):
        self._lines = None

    @property
    def lines(self) -> list[str]:
        if self._lines is None:
            self._lines = stdlib_lines()
            if not self._lines:
                raise RuntimeError(f"no standard-library source found under {os.path.dirname(os.__file__)}")
        return self._lines

    def sample(self, rng: random.Random, level: float = 1.0) -> Example:
        line = self.lines[rng.randrange(len(self.lines))]
        cut = len(line) - self.answer_chars
        prompt = line[max(0, cut - (self.prompt_width - 1)): cut]
        answer = line[cut:]
        return Example(prompt, answer, answer)

    def score(self, prediction: str, example: Example) -> bool:
        return prediction == example.reference


TASKS = {"arith": ArithmeticTask, "arith-fewshot": FewShotArithmeticTask, "code": CodeCompletionTask}


def get_task(name: str, **options) -> Task:
    """A task by name (``"arith"``, ``"arith-fewshot"``, ``"code"``), built with ``options`` (the task class's
    keyword arguments, e.g. ``min_shots`` of ``"arith-fewshot"``; ``ValueError`` for one it does not take)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; allowed: {', '.join(TASKS)}")
    try:
        inspect.signature(TASKS[name]).bind(**options)
    except TypeError as error:
        raise ValueError(f"task {name!r} does not take the options {options!r} ({error})") from None
    return TASKS[name](**options)


def python_version() -> str:
    """The interpreter version whose standard library the code task reads (recorded in model cards)."""
    return ".".join(map(str, sys.version_info[:3]))
