"""``fair-calib``: the command-line interface (also ``optimum-cli fair-calib ...``, ``python -m fair_calib_hf_cli``
and ``python -m fair_calib_hf.cli``).

Subcommands::

    fair-calib quantize MODEL --out DIR [--method ...] [--dataset ...] [--prior FILE] [--push-to-hub REPO]
    fair-calib probe MODEL --out prior.safetensors
    fair-calib eval MODEL [--task arith|code] [--teacher FP_MODEL] [--out DIR]
    fair-calib inspect PATH [--json]

MODEL is a local folder, a hub id, or a zoo name (``zoo:llada-arith``); PATH a folder or a hub id. The hub
options of ``from_pretrained`` (--revision, --subfolder, --cache-dir, --local-files-only, --token) apply to
every file read.

Exit status: 0 success; 2 the command line does not parse (unknown option, missing or invalid argument,
no command; argparse's usage message); 1 anything refused or failed after that (bad input found by the work,
e.g. a missing path or an unknown ``--set`` field), printed as one line ``fair-calib <command>: error:
<reason>`` on stderr (``--debug`` or ``FAIR_CALIB_DEBUG=1`` shows the traceback instead); 130 interrupted.

This package is separate from :mod:`fair_calib_hf` on purpose: importing ``fair_calib_hf`` registers the
quantizer with transformers, which imports torch and transformers (seconds). Parsing the command line and
printing ``--help`` import neither; :mod:`fair_calib_hf.cli.commands` (the work) is imported only to run a
command.
"""
from __future__ import annotations

import argparse
import difflib
import importlib.util
import os
import re
import sys

PROG = "fair-calib"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show the full traceback on failure")
    parser.add_argument("--no-progress", action="store_true",
                        help="disable progress bars (transformers' and datasets')")


def _model_args(parser: argparse.ArgumentParser, calibrates: bool = True) -> None:
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="dtype of the float parts when loading (default: the checkpoint's)")
    parser.add_argument("--device-map", default=None,
                        help="accelerate device map: 'auto', a device ('cpu', 'cuda:0'), or a JSON object "
                             "{module: device|'cpu'|'disk'}"
                             + (" (blocks then stream to --calibration-device)" if calibrates else ""))
    parser.add_argument("--offload-folder", default=None, help="folder for weights offloaded to 'disk'")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="trust the modeling code of a hub checkpoint (local folders and zoo models are "
                             "trusted: LLaDA and Dream ship their code with the weights)")


def _hub_args(parser: argparse.ArgumentParser, subject: str = "MODEL", teacher: bool = False) -> None:
    g = parser.add_argument_group("hub", f"where the files of a hub {subject} come from, as for from_pretrained"
                                  + ("; the cache, offline and token options also hold for the teacher"
                                     if teacher else ""))
    g.add_argument("--revision", default=None, help=f"branch, tag or commit of a hub {subject} (default: main)")
    g.add_argument("--subfolder", default=None, help=f"folder of the checkpoint inside {subject}")
    g.add_argument("--cache-dir", default=None, help="hub cache folder (default: huggingface_hub's, HF_HUB_CACHE)")
    g.add_argument("--local-files-only", action="store_true",
                   help="read only files already in the cache; never the network")
    g.add_argument("--token", default=None,
                   help="hub access token (default: HF_TOKEN or the saved login, as huggingface_hub reads it)")


def _data_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("calibration data")
    g.add_argument("--dataset", default=None,
                   help="hub dataset id, local file (.txt/.json/.jsonl/.csv/.parquet) or folder; default for a zoo "
                        "model: its task's calibration split")
    g.add_argument("--dataset-config", default=None, help="hub dataset configuration (subset) name")
    g.add_argument("--split", default="train", help="dataset split, slicing allowed (default: train)")
    g.add_argument("--text-column", default="text", help="text column (default: text)")
    g.add_argument("--chat-template", action="store_true",
                   help="render each text as a user turn with the tokenizer's chat template (instruct models)")
    g.add_argument("--num-samples", type=int, default=None, help="calibration sequences (default 128)")
    g.add_argument("--seq-len", type=int, default=None, help="tokens per calibration sequence (default 1024)")


def _calib_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("calibration")
    g.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    g.add_argument("--calibration-device", default=None, help="device of the block loop (default: CUDA if available)")
    g.add_argument("--prior-window", type=int, default=None, help="Stage I window K (default 256; zoo: gen_length)")
    g.add_argument("--n-probe", type=int, default=None, help="Stage I rollouts (default 512)")
    g.add_argument("--probe-steps", type=int, default=None, help="steps per Stage I rollout (default 64)")
    g.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="any other FairCalibConfig field, VALUE parsed as JSON when possible, booleans as "
                        "True/False, yes/no or 1/0 (repeatable), e.g. --set epochs=5 --set lwc=False")


def method_name(text: str) -> str:
    """A ``--method`` as typed (``fair-calib``, ``FlatQuant``) in the library's spelling (``fair_calib``,
    ``flatquant``)."""
    return text.strip().lower().replace("-", "_")


PRECISION_NAMES = ("w4a4", "w4a8", "w8a8", "w4a16", "w8a16")
"""``--precision`` values: the names of :data:`fair_calib_hf.precisions.PRECISIONS` (listed here so that parsing
the command line imports neither torch nor transformers; a test checks the two agree)."""


def add_quantize_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="local folder, hub id, or zoo:NAME")
    parser.add_argument("--out", required=True, help="output folder (written atomically)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--method", default="fair_calib", type=method_name,
                        choices=["rtn", "gptq", "quarot", "flatquant", "fair_calib"],
                        help="quantization method (default: fair_calib; fair-calib works too)")
    parser.add_argument("--precision", default=None, type=str.lower, choices=list(PRECISION_NAMES),
                        help="weight/activation bits (default: w4a4; w4a8 and w8a8 quantize activations to int8, "
                             "w4a16 and w8a16 are weight-only with methods rtn/gptq; group sizes: --set group_size=128)")
    parser.add_argument("--prior", default=None, help="reuse a Stage I prior saved by `fair-calib probe`")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO", help="upload the folder to this hub repo")
    parser.add_argument("--private", action="store_true", help="create the hub repo as private")
    parser.add_argument("--eval-prompts", default=None,
                        help="prompts for the report's frontier diagnostics (.txt one per line, or .jsonl with "
                             "'prompt'); zoo models use their task's test split")
    parser.add_argument("--eval-count", type=int, default=16, help="evaluation prompts used (default 16)")
    parser.add_argument("--gen-length", type=int, default=32, help="window decoded for --eval-prompts (default 32)")
    parser.add_argument("--no-report", action="store_true", help="do not write the report")
    _model_args(parser)
    _hub_args(parser)
    _data_args(parser)
    _calib_args(parser)
    _common(parser)


def add_probe_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="local folder, hub id, or zoo:NAME (full precision)")
    parser.add_argument("--out", required=True, help="prior file to write (.safetensors)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing file")
    parser.add_argument("--plot", default=None, help="also plot the prior to this PNG")
    _model_args(parser)
    _hub_args(parser)
    _data_args(parser)
    _calib_args(parser)
    _common(parser)


def add_eval_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="quantized or float model: local folder, hub id, or zoo:NAME")
    parser.add_argument("--task", default=None, choices=["arith", "arith-fewshot", "code"],
                        help="zoo task (default: the task of the model or of the teacher, if a zoo model)")
    parser.add_argument("--teacher", default=None,
                        help="full-precision model for the frontier diagnostics (same family and task)")
    parser.add_argument("--split", default="test", help="task split (default: test)")
    parser.add_argument("--count", type=int, default=64, help="examples scored (default 64)")
    parser.add_argument("--frontier-count", type=int, default=16, help="prompts for the frontier diagnostics")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    g = parser.add_argument_group("decoding (default: the task's, 1 token per step; LLaDA in blocks of 8)")
    steps = g.add_mutually_exclusive_group()
    steps.add_argument("--tokens-per-step", type=int, default=None,
                       help="tokens committed per step: steps = answer window / N (the README tables' setting)")
    steps.add_argument("--steps", type=int, default=None, help="decoding steps over the answer window")
    g.add_argument("--block-length", type=int, default=None,
                   help="LLaDA-style semi-autoregressive block length (a divisor of the answer window)")
    parser.add_argument("--out", default=None, help="folder for results.json and the diagnostic plots")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    _model_args(parser, calibrates=False)
    _hub_args(parser, teacher=True)
    _common(parser)


def add_inspect_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="a quantized checkpoint: local folder or hub id")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--no-layout-check", action="store_true",
                        help="skip rebuilding the packed skeleton to check the tensors against the config")
    _hub_args(parser, subject="PATH")
    _common(parser)


COMMANDS = {
    "quantize": (add_quantize_args,
                 "calibrate and pack a model (W4A4, or weight-only W4A16 / W8A16), save it with a report"),
    "probe": (add_probe_args, "run Stage I alone and save the position prior (reuse with --prior)"),
    "eval": (add_eval_args, "task accuracy and frontier diagnostics against a full-precision teacher"),
    "inspect": (add_inspect_args, "describe what a quantized checkpoint contains"),
}


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="FAIR-Calib quantization (W4A4, W4A16, W8A16) for "
                                     "diffusion LMs (LLaDA, Dream).")
    parser.add_argument("--version", action="version", version=f"fair_calib_hf {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (add, help_text) in COMMANDS.items():
        add(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def package_version() -> str:
    """``fair_calib_hf.__version__``, read from ``fair_calib_hf/version.py`` without importing the package."""
    spec = importlib.util.find_spec("fair_calib_hf")
    path = os.path.join(list(spec.submodule_search_locations)[0], "version.py")
    with open(path) as handle:
        match = re.search(r"^__version__\s*=\s*[\"']([^\"']+)[\"']", handle.read(), re.M)
    return match.group(1) if match else "unknown"


CLI_NAMES = {"overwrite": "--overwrite", "seq_len": "--seq-len", "num_samples": "--num-samples",
             "calibration_dataset": "--dataset", "dataset_config": "--dataset-config", "dataset_split": "--split",
             "dataset_text_column": "--text-column", "apply_chat_template": "--chat-template",
             "prior_path": "--prior", "prior_window": "--prior-window", "n_probe": "--n-probe",
             "probe_steps": "--probe-steps", "calibration_device": "--calibration-device",
             "revision": "--revision", "subfolder": "--subfolder", "cache_dir": "--cache-dir"}
"""Library parameter → the option that sets it: errors raised by the library name Python parameters
(``overwrite=True``); the command line says the option instead (``--overwrite``). Fields without an option
keep their name, which is what ``--set FIELD=VALUE`` takes."""


def cli_wording(text: str) -> str:
    """``text`` with the parameters of :data:`CLI_NAMES` written as options:
    ``FairCalibConfig(name='value')`` → ``--option value``, ``name=True`` → ``--option``,
    ``name=value`` → ``--option value``, a bare ``name`` → ``--option`` (whole words only)."""
    def call(match):  # FairCalibConfig(name=value) with an option for name → "--option value"
        name, value = match.group(1), match.group(2).strip()
        if name not in CLI_NAMES:
            return match.group(0)
        value = value[1:-1] if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"" else value
        return CLI_NAMES[name] if value == "True" else f"{CLI_NAMES[name]} {value}"

    text = re.sub(r"FairCalibConfig\((\w+)=([^(),]*)\)", call, text)
    for name, option in CLI_NAMES.items():
        text = re.sub(rf"(?<![\w./-]){name}=True\b", option, text)
        text = re.sub(rf"(?<![\w./-]){name}=(?=\S)", option + " ", text)
        text = re.sub(rf"(?<![\w./-]){name}(?![\w=])", option, text)
    return text


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    if isinstance(err, KeyError) and text.startswith("'"):
        text = f"missing key {text}"
    first = text.splitlines()[0].strip() if text else ""
    return cli_wording(first) or type(err).__name__


def run_command(name: str, args: argparse.Namespace) -> int:
    """Run subcommand ``name`` with parsed ``args``; return the exit status (errors as one line on stderr)."""
    from fair_calib_hf.cli import commands

    debug = getattr(args, "debug", False) or os.environ.get("FAIR_CALIB_DEBUG") == "1"
    try:
        if getattr(args, "no_progress", False):
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            try:  # datasets draws its own bars (reading and preparing a calibration file)
                import datasets
            except ImportError:
                pass
            else:
                datasets.disable_progress_bars()
        getattr(commands, f"run_{name}")(args)
        return 0
    except KeyboardInterrupt:
        print(f"{PROG} {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - every failure becomes one line unless --debug
        if debug:
            raise
        print(f"{PROG} {name}: error: {_one_line(err)}", file=sys.stderr)
        return 1


def unrecognized_message(extras: list[str], parser: argparse.ArgumentParser) -> str:
    """argparse's ``unrecognized arguments: ...`` with, for each unknown option, the closest option of
    ``parser`` (``difflib``): ``; did you mean --method?``."""
    options = [o for action in parser._actions for o in action.option_strings]
    hints = []
    for extra in extras:
        if extra.startswith("-"):
            close = difflib.get_close_matches(extra.split("=", 1)[0], options, n=1)
            if close and close[0] not in hints:
                hints.append(close[0])
    message = f"unrecognized arguments: {' '.join(extras)}"
    return message + (f"; did you mean {' or '.join(hints)}?" if hints else "")


def _unknown_options(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """The ``--options`` of ``argv`` that ``parser`` does not have (nor abbreviates, when it allows that)."""
    options = [o for action in parser._actions for o in action.option_strings]
    unknown = []
    for token in argv:
        if token == "--":
            break
        name = token.split("=", 1)[0]
        if token.startswith("--") and name not in options and not (
                parser.allow_abbrev and any(o.startswith(name) for o in options)):
            unknown.append(token)
    return unknown


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    # an unknown option is reported by the subcommand's parser, with its usage and the closest option (exit 2),
    # before a missing required argument that the typo may have caused (--ot for --out)
    if argv and argv[0] in subparsers.choices:
        unknown = _unknown_options(argv[1:], subparsers.choices[argv[0]])
        if unknown:
            subparsers.choices[argv[0]].error(unrecognized_message(unknown, subparsers.choices[argv[0]]))
    args, extras = parser.parse_known_args(argv)
    if extras:
        target = subparsers.choices.get(args.command) or parser
        target.error(unrecognized_message(extras, target))
    if not args.command:
        parser.print_help()
        return 2
    return run_command(args.command, args)


def entry_point() -> None:
    """Console-script entry point (``fair-calib``)."""
    sys.exit(main())
