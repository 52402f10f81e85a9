"""``python -m fair_calib_hf.bench <benchmark> [options]``: one module per benchmark, each with ``main(argv)``."""
import importlib
import sys

BENCHMARKS = ("decode", "calibrate", "kernels", "quality", "budget", "summary", "gpu", "contention")


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in BENCHMARKS:
        print(f"usage: python -m fair_calib_hf.bench {{{','.join(BENCHMARKS)}}} [--help]", file=sys.stderr)
        raise SystemExit(2)
    name, argv = sys.argv[1], sys.argv[2:]
    importlib.import_module(f".{name}", __package__).main(argv)


if __name__ == "__main__":
    main()
