"""``python -m fair_calib_hf.bench <benchmark> [options]``: decode, calibrate, kernels."""
import sys

BENCHMARKS = ("decode", "calibrate", "kernels")


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in BENCHMARKS:
        print(f"usage: python -m fair_calib_hf.bench {{{','.join(BENCHMARKS)}}} [--help]", file=sys.stderr)
        raise SystemExit(2)
    name, argv = sys.argv[1], sys.argv[2:]
    if name == "decode":
        from .decode import main as run
    elif name == "calibrate":
        from .calibrate import main as run
    else:
        from .kernels import main as run
    run(argv)


if __name__ == "__main__":
    main()
