"""The work behind each ``fair-calib`` subcommand (argument parsing lives in :mod:`fair_calib_hf_cli`).

The functions here are also the library entry points that :mod:`fair_calib_hf.optimum_quantizer` uses:
:func:`resolve_model`, :func:`preflight`, :func:`quantize_to_folder`.
"""
from __future__ import annotations

import copy
import json
import os
import sys
import time
from types import SimpleNamespace

import torch

REMASK_POSITIONS = 8
"""LLaDA-style post-commit diagnostics of the report and ``eval``: committed positions measured per prompt, each
read re-masked at every later step (8 extra rows per prompt and step; :func:`..diagnostics.own_diagnostics`)."""


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- models ----------------------------------------------------------------------------------------------------

def _looks_local(spec: str) -> bool:
    return spec.startswith(("/", ".", "~")) or spec.count("/") != 1 or os.sep + os.sep in spec


def resolve_model(spec: str, hub_options: dict | None = None) -> tuple[str, bool, bool]:
    """``(path or hub id, is_local, is_zoo)`` for a MODEL argument; ``hub_options``: the ``revision`` /
    ``subfolder`` / ... of the load (:mod:`..hub`). ``FileNotFoundError`` for a local path that does not exist
    or has no ``config.json`` (in ``subfolder``), ``ValueError`` for an unknown zoo name or a ``revision`` given
    with a local folder (transformers would ignore it)."""
    from .. import zoo

    options = hub_options or {}
    if spec.startswith(zoo.PREFIX):
        path, is_zoo = zoo.resolve(spec), True
    else:
        path, is_zoo = os.path.expanduser(spec), False
    if os.path.isdir(path):
        if options.get("revision"):
            raise ValueError(f"revision={options['revision']} applies to a hub id, and {spec} is a local folder: "
                             "drop it, or pass the hub id")
        sub = options.get("subfolder")
        if not os.path.isfile(os.path.join(path, sub or "", "config.json")):
            raise FileNotFoundError(f"{os.path.join(spec, sub) if sub else spec} is a folder without config.json: "
                                    "not a transformers checkpoint")
        return path, True, is_zoo
    if os.path.exists(path):
        raise FileNotFoundError(f"{spec} is a file; pass the checkpoint folder")
    if _looks_local(spec):
        raise FileNotFoundError(f"model path {spec} does not exist (and it is not a hub id 'owner/name' or zoo:NAME)")
    return spec, False, False


def preflight(path: str, trust_remote_code: bool = True, want_float: bool = True,
              hub_options: dict | None = None) -> str:
    """Refuse, before loading any weight: an unsupported architecture (listing the supported families), a
    checkpoint already quantized (by another method, or by fair_calib when ``want_float``), and corrupted or
    truncated safetensors files. ``hub_options``: the ``revision`` / ``cache_dir`` / ... of the load
    (:mod:`..hub`), for the files read here. Returns the model's family (``"llada"`` / ``"dream"``)."""
    from transformers import AutoConfig

    from ..architectures import get_adapter
    from ..checkpoint import check_safetensors_files, locate_checkpoint_files, read_config_json

    hub_options = hub_options or {}
    raw = read_config_json(path, hub_options) or {}
    qc = raw.get("quantization_config")
    if qc:
        method = qc.get("quant_method", "unknown") if isinstance(qc, dict) else "unknown"
        if method != "fair_calib":
            raise ValueError(f"{path} is already quantized with quant_method={method!r}; fair_calib calibrates "
                             "full-precision checkpoints only")
        if want_float:
            raise ValueError(f"{path} is already a fair_calib checkpoint (method={qc.get('method')!r}); "
                             "quantize its full-precision original instead")
    if raw.get("model_type") is not None:
        adapter = get_adapter(type("C", (), {"model_type": raw["model_type"]})())
    else:
        adapter = get_adapter(AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code,
                                                         **(hub_options or {})))
    if os.path.isdir(path):
        check_safetensors_files(locate_checkpoint_files(path, hub_options))
    return adapter.family


def _dtype(name: str):
    from ..dtypes import float_dtype

    return "auto" if name in (None, "auto") else float_dtype(name)


def _device_map(value):
    if value is None:
        return None
    value = value.strip()
    if value.startswith("{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"--device-map is not valid JSON: {err}") from err
    return value


def load_kwargs(args, is_local: bool) -> dict:
    kwargs = {"trust_remote_code": bool(is_local or getattr(args, "trust_remote_code", False)),
              "dtype": _dtype(getattr(args, "dtype", "auto"))}
    device_map = _device_map(getattr(args, "device_map", None))
    if device_map is not None:
        kwargs["device_map"] = device_map
        if isinstance(device_map, dict) and "disk" in device_map.values() and not getattr(args, "offload_folder", None):
            raise ValueError("--device-map puts modules on 'disk': pass --offload-folder")
    if getattr(args, "offload_folder", None):
        kwargs["offload_folder"] = args.offload_folder
    return kwargs


def _from_pretrained(path: str, **kwargs):
    from transformers import AutoModel

    return AutoModel.from_pretrained(path, **kwargs)


def load_tokenizer(path: str, trust_remote_code: bool = True, hub_options: dict | None = None):
    """The tokenizer of checkpoint ``path`` (``hub_options`` as for :func:`preflight`), or ``None`` if it has
    none."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **(hub_options or {}))
    except Exception:  # noqa: BLE001 - a checkpoint without tokenizer files
        return None


# -- configuration ---------------------------------------------------------------------------------------------

BOOLEAN_WORDS = {"true": True, "false": False, "yes": True, "no": False, "1": True, "0": False}
"""The spellings ``--set FIELD=VALUE`` takes for a boolean field (any case)."""


def _boolean_fields() -> set[str]:
    """``FairCalibConfig`` fields annotated ``bool`` (or ``bool | None``)."""
    import inspect

    from ..config import FairCalibConfig

    params = inspect.signature(FairCalibConfig.__init__).parameters.values()
    return {p.name for p in params if "bool" in str(p.annotation)}


def _parse_set(items: list[str]) -> dict:
    """``{field: value}`` of the ``--set FIELD=VALUE`` arguments: a boolean field takes True/False, true/false,
    yes/no or 1/0 (any case), ``method`` the ``--method`` spellings (``fair-calib``); any other VALUE is parsed
    as JSON when it parses, else kept as text.
    ``ValueError`` for a malformed item, a field ``FairCalibConfig`` does not have (with the closest name), or
    a boolean field given another word."""
    from ..config import field_names, unknown_fields_message

    booleans = _boolean_fields()
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE")
        key, value = item.split("=", 1)
        key = key.strip()
        if key in booleans:
            word = value.strip().lower()
            if word not in BOOLEAN_WORDS:
                raise ValueError(f"--set {key}={value}: {key} is a boolean; write True/False (or true/false, "
                                 "yes/no, 1/0)")
            out[key] = BOOLEAN_WORDS[word]
            continue
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
        if key == "method" and isinstance(out[key], str):
            from fair_calib_hf_cli import method_name

            out[key] = method_name(out[key])
    settable = [f for f in field_names() if f not in ("quant_method", "tokenizer")]  # not settable from a shell
    unknown = [k for k in out if k not in settable]
    if unknown:
        raise ValueError(unknown_fields_message(unknown, "--set", settable))
    return out


def build_config(args, path: str, is_zoo: bool, method: str, tokenizer=None):
    """The ``FairCalibConfig`` for ``quantize`` / ``probe`` from the parsed arguments. A zoo model without
    ``--dataset`` calibrates on its task's calibration split; with or without it, a zoo model's defaults are
    fitted to how its task is decoded (:func:`~fair_calib_hf.zoo.evaluate.calibration_geometry`:
    ``seq_len = prompt_width + gen_length``, ``prior_window = gen_length``, the sampler's steps and block length
    for Stage I). ``FileNotFoundError`` for a local ``--dataset`` or ``--prior`` that does not exist."""
    from ..config import FairCalibConfig
    from ..zoo.evaluate import calibration_geometry

    kw = {"method": method, "seed": args.seed}
    for arg, field in (("num_samples", "num_samples"), ("seq_len", "seq_len"), ("prior_window", "prior_window"),
                       ("n_probe", "n_probe"), ("probe_steps", "probe_steps"),
                       ("calibration_device", "calibration_device")):
        if getattr(args, arg, None) is not None:
            kw[field] = getattr(args, arg)
    if getattr(args, "prior", None):
        if not os.path.isfile(args.prior):
            raise FileNotFoundError(f"--prior {args.prior} does not exist")
        kw["prior_path"] = args.prior
        if method == "gptq":  # a prior given to plain GPTQ weights its Hessian
            kw["gptq_position_weights"] = "prior"
    source = None
    if args.dataset:
        from ..calibration.data import _looks_like_path

        if _looks_like_path(args.dataset) and not os.path.exists(os.path.expanduser(args.dataset)):
            raise FileNotFoundError(f"--dataset {args.dataset} does not exist (no such file or folder)")
        kw.update(calibration_dataset=args.dataset, dataset_config=args.dataset_config, dataset_split=args.split,
                  dataset_text_column=args.text_column, apply_chat_template=args.chat_template)
        source = args.dataset
    elif is_zoo:
        from .. import zoo

        task = zoo.task_of(path)
        if tokenizer is None:
            raise ValueError(f"zoo model {path} has no tokenizer")
        count = kw.get("num_samples", 128)
        kw["calibration_dataset"] = task.calibration_sequences(tokenizer, count, seed=args.seed)
        kw["num_samples"] = count
        source = f"zoo task {task.name!r}, calibration split ({count} sequences)"
    if is_zoo:  # a zoo model is trained on its task's layout: its defaults hold for any calibration data
        from .. import zoo

        for field, value in calibration_geometry(zoo.task_of(path), zoo.family_of(path)).items():
            kw.setdefault(field, value)
    settings = _parse_set(getattr(args, "set", []))
    if getattr(args, "precision", None):
        from ..precisions import PRECISIONS

        precision = PRECISIONS[args.precision]
        if method not in precision.methods:
            default = " (the CLI's default)" if method == "fair_calib" else ""
            raise ValueError(f"--method {method}{default} does not support --precision {args.precision}: pass "
                             f"--method {' or '.join(precision.methods)}")
        for field, value in (("w_bits", precision.w_bits), ("a_bits", precision.a_bits)):
            if field in settings and settings[field] != value:
                raise ValueError(f"--precision {args.precision} sets {field}={value} but --set {field}="
                                 f"{settings[field]}: drop one of them")
            kw[field] = value
    kw.update(settings)
    if tokenizer is not None:
        kw["tokenizer"] = tokenizer
    cfg = FairCalibConfig(**kw)
    if cfg.calibration_dataset is None and cfg.requires_calibration_data:
        raise ValueError(f"--method {method} needs calibration data: pass --dataset (a hub id, a local file or "
                         "folder), or use a zoo: model")
    return cfg, source


# -- evaluation prompts (report) -------------------------------------------------------------------------------

def _eval_set(args, path: str, is_zoo: bool, tokenizer, family: str):
    """``(input_ids, attention_mask, DecodeConfig, description, task)`` for the report's frontier diagnostics,
    or ``None`` when no evaluation set is available."""
    from ..decoding import DecodeConfig, left_pad

    if getattr(args, "eval_prompts", None):
        if tokenizer is None:
            raise ValueError("--eval-prompts needs the model's tokenizer")
        prompts = _read_prompts(args.eval_prompts)[: args.eval_count]
        rows = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        bos = tokenizer.bos_token_id
        rows = [([bos] if bos is not None else []) + r for r in rows]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        ids, mask = left_pad(rows, pad)
        g = args.gen_length
        block = 8 if (family == "llada" and g % 8 == 0) else g
        policy = "low_confidence" if family == "llada" else "maskgit_plus"
        cfg = DecodeConfig(gen_length=g, steps=g, block_length=block if family == "llada" else None, policy=policy)
        return ids, mask, cfg, f"{len(rows)} prompts from {args.eval_prompts}", None
    if is_zoo:
        from .. import zoo
        from ..zoo.evaluate import default_decode_config

        task = zoo.task_of(path)
        examples = task.examples("test", args.eval_count, seed=0)
        prompts, _ = task.encode(examples, tokenizer)
        return prompts, None, default_decode_config(task, family, record=True), \
            f"{len(examples)} test-split examples of zoo task {task.name!r}", task
    return None


def _read_prompts(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--eval-prompts {path} does not exist")
    with open(path) as f:
        if path.endswith(".jsonl"):
            prompts = [json.loads(line)["prompt"] for line in f if line.strip()]
        else:
            prompts = [line.rstrip("\n") for line in f if line.strip()]
    if not prompts:
        raise ValueError(f"--eval-prompts {path} holds no prompt")
    return prompts


# -- quantize --------------------------------------------------------------------------------------------------

def quantize_to_folder(model_spec: str, out: str, config=None, *, args=None, overwrite: bool = False,
                       report: bool = True, load_options: dict | None = None) -> dict:
    """Load ``model_spec`` with calibration, save it atomically into ``out`` (weights, tokenizer, the Stage I
    prior, the report) and return a summary dict. With ``args`` (the CLI namespace) the config is built from
    them; otherwise ``config`` is a ``FairCalibConfig``. The hub options (``--revision`` ... of ``args``, or
    ``revision=`` ... of ``load_options``) apply to every file read: config, tokenizer, weights, remote code."""
    from ..checkpoint import atomic_directory, check_output_location, describe_checkpoint, refuse_existing_output
    from ..hub import options_of
    from ..report import calibration_summary, write_report

    if args is not None:
        _parse_set(args.set)  # a typo in --set fails here, before any loading
        if getattr(args, "prior", None) and args.method not in ("fair_calib", "gptq"):
            raise ValueError(f"--prior applies to --method fair_calib (Stage II's loss) or gptq (its Hessian) only "
                             f"(the Stage I position prior), not --method {args.method}: drop --prior or use "
                             "--method fair_calib / gptq")
    hub = options_of(vars(args) if args is not None else load_options or {})
    path, is_local, is_zoo = resolve_model(model_spec, hub)
    trust = bool(is_local or (args is not None and args.trust_remote_code)
                 or (load_options or {}).get("trust_remote_code"))
    preflight(path, trust_remote_code=trust, hub_options=hub)
    out = os.path.abspath(os.path.expanduser(out))
    refuse_existing_output(out, overwrite)
    check_output_location(out)
    tokenizer = load_tokenizer(path, trust, hub)
    if args is not None:
        config, source = build_config(args, path, is_zoo, args.method, tokenizer)
        kwargs = {**load_kwargs(args, is_local), **hub}
        from ..calibration import check_positions
        from ..checkpoint import read_config_json

        # a seq_len beyond the model's positions is refused before any weight is loaded
        check_positions(config, SimpleNamespace(**(read_config_json(path, hub) or {})),
                        explicit=getattr(args, "seq_len", None) is not None or "seq_len" in _parse_set(args.set))
    else:
        if getattr(config, "tokenizer", None) is None and tokenizer is not None:
            config = copy.deepcopy(config)  # this model's tokenizer, on a copy: the caller's config is reused as is
            config.tokenizer = tokenizer
        source = config.calibration_dataset if isinstance(config.calibration_dataset, str) else None
        kwargs = {"trust_remote_code": trust, "dtype": "auto", **(load_options or {})}
    # the report's evaluation: --eval-prompts, or a zoo model's task (the Python entry point uses the defaults)
    eval_args = args if args is not None else SimpleNamespace(eval_prompts=None, eval_count=16, gen_length=32)
    evaluates = report and (bool(eval_args.eval_prompts) or (is_zoo and tokenizer is not None))
    steps = 3 if evaluates else 2
    _say(f"[1/{steps}] calibrating {model_spec} with method={config.method}"
         + (f" on {source}" if source else "") + " ...")
    started = time.perf_counter()
    model = _from_pretrained(path, quantization_config=config, **kwargs)
    cal = model.hf_quantizer.calibration_report
    summary = calibration_summary(cal)
    frontier = accuracy = eval_source = None
    if evaluates:
        eval_set = _eval_set(eval_args, path, is_zoo, tokenizer, _family(model))
        _say(f"[2/{steps}] frontier diagnostics against the full-precision model ...")
        frontier, accuracy, eval_source = _frontier(path, kwargs, model, tokenizer, eval_set, eval_args)
    _say(f"[{steps}/{steps}] saving to {out} ...")
    with atomic_directory(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if cal.prior is not None:
            cal.prior.save(os.path.join(tmp, "fair_calib_prior.safetensors"))
        info = describe_checkpoint(tmp, check_layout=False)
        sizes = {"disk_bytes": info["disk_bytes"], "float_bytes": info["float_bytes"]}
        if report:
            load_settings = {k: (str(v) if not isinstance(v, (str, int, float, bool)) else v)
                             for k, v in kwargs.items() if k not in ("trust_remote_code", "token")}
            write_report(tmp, model=model_spec, config=model.config.quantization_config.to_dict(),  # as saved
                         calibration=summary, load_settings=load_settings, sizes=sizes, frontier=frontier,
                         accuracy=accuracy, eval_source=eval_source, data_source=source)
    result = {"out": out, "method": config.method, "precision": f"W{config.w_bits}A{config.a_bits}",
              "packed": len(info["packed"]), "seconds":
              time.perf_counter() - started, **sizes}
    if report:
        from ..report import REPORT_MD, headline

        result.update(report=os.path.join(out, REPORT_MD), headline=headline(frontier, accuracy, summary))
    return result


def _family(model) -> str:
    from ..architectures import get_adapter

    return get_adapter(model).family


def _frontier(path, kwargs, student, tokenizer, eval_set, args):
    from ..diagnostics import compare_models

    from transformers.utils import logging as hf_logging

    from ..report import FULL_PRECISION, QUANTIZED

    ids, mask, decode_cfg, description, task = eval_set
    parts = ["loading the full-precision model", f"decoding {ids.shape[0]} prompts with both models"]
    if task is not None:
        parts += [f"{FULL_PRECISION} accuracy on {args.eval_count} problems",
                  f"{QUANTIZED} accuracy on {args.eval_count} problems"]
    bar = hf_logging.tqdm(total=len(parts), desc="fair_calib: frontier diagnostics")
    bar.set_postfix_str(parts[0])
    teacher = _from_pretrained(path, **kwargs)
    teacher.eval()
    student.eval()
    bar.update()
    bar.set_postfix_str(parts[1])
    report = compare_models(teacher, student, ids, mask, decode_cfg, remask_positions=REMASK_POSITIONS)
    bar.update()
    accuracy = None
    if task is not None:
        from ..zoo.evaluate import evaluate

        accuracy = {}
        for name, m, part in (("teacher", teacher, parts[2]), ("student", student, parts[3])):
            bar.set_postfix_str(part)
            accuracy[name] = _strip(evaluate(m, tokenizer, task, "test", args.eval_count, seed=0))
            bar.update()
    bar.close()
    del teacher
    return report.to_dict(), accuracy, description


def _strip(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "samples"}


def run_quantize(args) -> None:
    res = quantize_to_folder(args.model, args.out, args=args, overwrite=args.overwrite, report=not args.no_report)
    print(f"wrote {res['out']}: method={res['method']} {res['precision']}, {res['packed']} packed linears, "
          f"{res['disk_bytes'] / 2**20:.2f} MiB on disk vs {res['float_bytes'] / 2**20:.2f} MiB float, "
          f"{res['seconds']:.1f} s")
    if args.push_to_hub:
        url = push_folder(res["out"], args.push_to_hub, private=args.private, token=args.token)
        print(f"uploaded to {url}")
    if "report" in res:
        print(f"report {res['report']}: {res['headline']}")


def push_folder(folder: str, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Create (if needed) the hub model repo and upload the checkpoint folder in one commit (``token``: default
    huggingface_hub's, ``HF_TOKEN`` or the saved login)."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    operations = []
    for root, _, names in os.walk(folder):
        for name in sorted(names):
            full = os.path.join(root, name)
            operations.append(CommitOperationAdd(path_in_repo=os.path.relpath(full, folder).replace(os.sep, "/"),
                                                 path_or_fileobj=full))
    api.create_commit(repo_id=repo_id, operations=operations, repo_type="model",
                      commit_message="Upload FAIR-Calib quantized checkpoint")
    return f"https://huggingface.co/{repo_id}"


# -- probe -----------------------------------------------------------------------------------------------------

def run_probe(args) -> None:
    from ..calibration.data import load_calibration_samples
    from ..calibration.stage1_prior import probe_position_prior

    from ..hub import options_of

    _parse_set(args.set)  # a typo in --set fails here, before any loading
    hub = options_of(vars(args))
    path, is_local, is_zoo = resolve_model(args.model, hub)
    trust = bool(is_local or args.trust_remote_code)
    preflight(path, trust_remote_code=trust, hub_options=hub)
    out = os.path.abspath(os.path.expanduser(args.out))
    if os.path.isdir(out):
        raise IsADirectoryError(f"--out {out} is a folder; pass a file name such as prior.safetensors")
    if os.path.exists(out) and not args.overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    from ..checkpoint import check_output_location

    check_output_location(out)
    tokenizer = load_tokenizer(path, trust, hub)
    args.prior = None
    config, source = build_config(args, path, is_zoo, "fair_calib", tokenizer)
    _say(f"[1/2] loading {args.model} ...")
    model = _from_pretrained(path, **load_kwargs(args, is_local), **hub)
    model.eval()
    samples = load_calibration_samples(config, model, fixed_length=True, hub_options=hub)
    _say(f"[2/2] Stage I: {config.n_probe} rollouts on {len(samples)} sequences of {config.seq_len} tokens ...")
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        prior = probe_position_prior(model, torch.stack(samples), config)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = f"{out}.tmp-{os.getpid()}"
    try:
        from ..checkpoint import chmod_to_umask

        prior.save(tmp)
        chmod_to_umask(tmp)  # safetensors writes 0600
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    if args.plot:
        from ..report import plot_prior

        plot_prior(prior.weights.tolist(), int(prior.frontier.numel()), os.path.abspath(args.plot))
    print(f"wrote {out}: one weight per position of a {prior.weights.numel()}-token calibration sequence, probe "
          f"window = the last {prior.frontier.numel()} positions, {config.n_probe} rollouts in "
          f"{time.perf_counter() - started:.1f} s; reuse with --prior {args.out}")


# -- eval ------------------------------------------------------------------------------------------------------

def _eval_decoding(args, task, family: str):
    """The :class:`~fair_calib_hf.decoding.DecodeConfig` of ``fair-calib eval``: the task's default for
    ``family`` with ``--tokens-per-step`` (steps = answer window / N), ``--steps`` and ``--block-length``
    applied; ``ValueError`` naming the option for settings that do not fit the task's answer window."""
    from ..zoo.evaluate import default_decode_config

    overrides = {}
    if args.tokens_per_step is not None:
        if args.tokens_per_step < 1 or task.gen_length % args.tokens_per_step:
            raise ValueError(f"--tokens-per-step {args.tokens_per_step} does not divide the {task.gen_length}-token "
                             f"answer window of task {task.name!r}: pass a divisor of {task.gen_length}")
        overrides["steps"] = task.gen_length // args.tokens_per_step
    if args.steps is not None:
        overrides["steps"] = args.steps
    if args.block_length is not None:
        overrides["block_length"] = args.block_length
    try:
        return default_decode_config(task, family, record=False, **overrides)
    except ValueError as err:
        raise ValueError(f"{err} (decoding set by --tokens-per-step / --steps / --block-length, answer window "
                         f"{task.gen_length} tokens of task {task.name!r})") from None


def _check_teacher(args, family: str, teacher_family: str, task, teacher_task) -> None:
    """Refuse a ``--teacher`` of another family, or trained on another task than the one evaluated."""
    if teacher_family != family:
        raise ValueError(f"--teacher {args.teacher} is a {teacher_family} model of another family than {args.model} "
                         f"({family}): pass the full-precision model of the same family and task (the one {args.model} "
                         "was quantized from)")
    if teacher_task is not None and teacher_task.name != task.name:
        raise ValueError(f"--teacher {args.teacher} was trained on another task ({teacher_task.name!r}) than the "
                         f"one evaluated ({task.name!r}): pass the full-precision model of the same family and task (the "
                         f"one {args.model} was quantized from)")


def run_eval(args) -> None:
    import dataclasses

    from .. import zoo
    from ..zoo.evaluate import decode_settings, describe_accuracy, evaluate
    from ..hub import REPO_OPTIONS, options_of
    from ..zoo.tasks import get_task

    hub = options_of(vars(args))  # revision / subfolder name a place in MODEL; the others hold for --teacher too
    teacher_hub = {k: v for k, v in hub.items() if k not in REPO_OPTIONS}
    path, is_local, _ = resolve_model(args.model, hub)
    teacher_path = None
    if args.teacher:
        teacher_path, t_local, _ = resolve_model(args.teacher, teacher_hub)
    teacher_task = zoo.task_of(teacher_path) if teacher_path and os.path.isdir(teacher_path) else None
    if args.task:
        task = get_task(args.task)
    else:
        task = (zoo.task_of(path) if is_local else None) or teacher_task
        if task is None:
            raise ValueError("no task for this model: pass --task arith|arith-fewshot|code")
    if args.out:
        from ..checkpoint import check_output_location, refuse_existing_output

        args.out = os.path.abspath(os.path.expanduser(args.out))  # the folder checked is the folder written
        refuse_existing_output(args.out, args.overwrite)
        check_output_location(args.out)
    kwargs = {**load_kwargs(args, is_local), **hub}
    family = preflight(path, trust_remote_code=kwargs["trust_remote_code"], want_float=False, hub_options=hub)
    if teacher_path:
        tkw = {**load_kwargs(args, t_local), **teacher_hub}
        teacher_family = preflight(teacher_path, trust_remote_code=tkw["trust_remote_code"], want_float=True,
                                   hub_options=teacher_hub)
        _check_teacher(args, family, teacher_family, task, teacher_task)
    decode_cfg = _eval_decoding(args, task, family)
    model = _from_pretrained(path, **kwargs)
    tokenizer = load_tokenizer(path, kwargs["trust_remote_code"], hub) or (
        load_tokenizer(teacher_path, hub_options=teacher_hub) if teacher_path else None)
    if tokenizer is None:
        raise ValueError(f"{args.model} has no tokenizer files")
    settings = decode_settings(decode_cfg)
    _say(f"[1/2] accuracy of {args.model} on {task.name}/{args.split} (n={args.count}), decoding {settings} ...")
    results = {"model": args.model, "task": task.name, "decoding": settings,
               "student": _strip(evaluate(model, tokenizer, task, args.split, args.count, seed=args.seed,
                                          config=decode_cfg, batch_size=args.batch_size))}
    print(f"{args.model}: {describe_accuracy(results['student'])} on {task.name}/{args.split}")
    if teacher_path:
        teacher = _from_pretrained(teacher_path, **tkw)
        teacher.eval()
        results["teacher"] = _strip(evaluate(teacher, tokenizer, task, args.split, args.count, seed=args.seed,
                                             config=decode_cfg, batch_size=args.batch_size))
        print(f"{args.teacher}: {describe_accuracy(results['teacher'])} (full precision)")
        _say(f"[2/2] frontier diagnostics on {args.frontier_count} prompts ...")
        from ..diagnostics import compare_models
        from ..report import amplification_value

        examples = task.examples(args.split, args.frontier_count, seed=args.seed)
        prompts, _ = task.encode(examples, tokenizer)
        frontier = compare_models(teacher, model, prompts, None, dataclasses.replace(decode_cfg, record=True),
                                  remask_positions=REMASK_POSITIONS).to_dict()
        results["frontier"] = frontier
        mm = frontier["mismatch"]
        print(f"frontier (quantized vs full precision; definitions in fair_calib_hf/diagnostics/metrics.py): "
              f"flip rate {frontier['flip_rate']:.4f}, teacher-forced probability MSE "
              f"{frontier['teacher_forced_prob_mse_mean']:.3e}, prompts with a false commit "
              f"{frontier['false_commit_rate']:.4f}, amplification {amplification_value(frontier)}, token "
              f"agreement {frontier['token_agreement']:.4f}")
        print(f"  each model on its own trajectory, full precision / quantized: post-commit mean-disagree "
              f"{mm['teacher']['mean_disagree']:.4f} / {mm['student']['mean_disagree']:.4f}, never-agree "
              f"{mm['teacher']['never_agree']:.4f} / {mm['student']['never_agree']:.4f}, stability lag p90 (steps) "
              f"{frontier['lag_p90']['teacher']} / {frontier['lag_p90']['student']}"
              + (f" ({REMASK_POSITIONS} committed positions per prompt, read re-masked)"
                 if mm["teacher"]["remasked"] else ""))
    if args.out:
        from ..checkpoint import atomic_directory

        with atomic_directory(os.path.abspath(args.out), overwrite=args.overwrite) as tmp:
            if "frontier" in results:
                from ..diagnostics.plots import (plot_amplification, plot_flip_rate, plot_lag_ccdf,
                                                 plot_teacher_forced_prob_mse)
                from ..report import QUANTIZED, display_names

                f = results["frontier"]
                plot_flip_rate({QUANTIZED: f["flip_rate_per_step"]}, os.path.join(tmp, "flip_rate.png"))
                plot_amplification({QUANTIZED: f["amplification_curve"]}, os.path.join(tmp, "amplification.png"))
                plot_teacher_forced_prob_mse({QUANTIZED: f["teacher_forced_prob_mse_curve"]},
                                             os.path.join(tmp, "prob_mse.png"))
                plot_lag_ccdf(display_names(f["lags"]), os.path.join(tmp, "lag_ccdf.png"))
            with open(os.path.join(tmp, "results.json"), "w") as handle:
                json.dump(results, handle, indent=1, default=str)
        print(f"wrote {os.path.abspath(args.out)}")


# -- inspect ---------------------------------------------------------------------------------------------------

def run_inspect(args) -> None:
    from ..checkpoint import CheckpointMismatchError, describe_checkpoint
    from ..hub import options_of

    info = describe_checkpoint(checkpoint_folder(args.path, options_of(vars(args))),
                               check_layout=not args.no_layout_check)
    if args.json:
        shown = dict(info)
        if shown.get("prior"):
            shown["prior"] = {k: v for k, v in shown["prior"].items() if k != "weights"}
        print(json.dumps(shown, indent=1, default=str))
    else:
        _print_info(info)
    layout = info["layout"]
    if layout.get("checked") and not layout.get("ok"):
        raise CheckpointMismatchError(f"the tensors do not match the quantization_config: "
                                      f"{'; '.join(layout['problems'][:4])}")


def checkpoint_folder(spec: str, hub_options: dict) -> str:
    """The local folder of checkpoint ``spec`` (a folder, or a hub id whose ``*.json`` and ``*.safetensors``
    files are fetched into the hub cache by ``huggingface_hub.snapshot_download`` with ``hub_options``), under
    ``subfolder``. ``FileNotFoundError`` for a local path that does not exist."""
    path = os.path.expanduser(spec)
    sub = hub_options.get("subfolder") or ""
    if not os.path.isdir(path) and not _looks_local(spec):
        from huggingface_hub import snapshot_download

        fetch = {k: v for k, v in hub_options.items() if k != "subfolder"}
        prefix = f"{sub}/" if sub else ""
        path = snapshot_download(spec, allow_patterns=[f"{prefix}*.json", f"{prefix}*.safetensors"], **fetch)
    elif not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint folder {spec} does not exist")
    return os.path.join(path, sub) if sub else path


def _print_info(info: dict) -> None:
    mib = 2**20
    print(f"checkpoint     {info['path']}")
    print(f"model_type     {info['model_type']} (float parts {info['dtype']})")
    groups = "per-channel" if info.get("group_size") is None else f"group size {info['group_size']}"
    print(f"method         {info['method']}  W{info['w_bits']}A{info['a_bits']} ({groups}, weights rounded by "
          f"{info['weight_rounding']})  format v{info['format_version']} "
          f"({info['pack_format']})" + (f"  written by fair_calib_hf {info['writer_version']}"
                                        if info.get("writer_version") else ""))
    print(f"files          {', '.join(info['files'])}")
    print(f"packed         {len(info['packed'])} linears" + (f": {info['packed'][0]} ... {info['packed'][-1]}"
                                                              if info["packed"] else ""))
    print(f"kept float     {len(info['kept_float'])}: {', '.join(info['kept_float'][:6])}"
          + (" ..." if len(info["kept_float"]) > 6 else ""))
    transforms = ", ".join(f"{k} x{v}" for k, v in sorted(info["transforms"].items())) or "none"
    print(f"transforms     {transforms}")
    prior = info.get("prior")
    print("prior          " + (f"Stage I position prior: one weight per position of a {prior['positions']}-token "
                               f"calibration sequence, probe window = the last {prior['window']} positions"
                               if prior else "none"))
    ratio = info["float_bytes"] / info["disk_bytes"] if info["disk_bytes"] else float("nan")
    print(f"size           {info['disk_bytes'] / mib:.2f} MiB on disk vs {info['float_bytes'] / mib:.2f} MiB "
          f"float ({ratio:.2f}x smaller)")
    layout = info["layout"]
    if layout.get("checked"):
        print("layout         " + ("matches the quantization_config" if layout["ok"]
                                   else f"MISMATCH: {'; '.join(layout['problems'][:4])}"))
    else:
        print("layout         not checked" + (f" ({layout['reason']})" if layout.get("reason") else ""))
