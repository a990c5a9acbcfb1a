"""The command line: ``python -m benchmarks [--quick] [--endpoint URL] [--threads 1,4,16,64]
[--out DIR] [--write-readme [PATH]]``."""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional, Tuple

__all__ = ["main", "build_parser"]


def _thread_counts(text: str) -> Tuple[int, ...]:
    try:
        counts = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of ints: {text!r}") from None
    if not counts or any(n < 1 or n > 1024 for n in counts):
        raise argparse.ArgumentTypeError(f"thread counts must be 1..1024: {text!r}")
    return tuple(sorted(set(counts)))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="pyelevator_pool benchmarks beside in-process plyvel, the original "
                    "py-elevator design, redis-py and a raw ZeroMQ echo.")
    p.add_argument("--quick", action="store_true",
                   help="fewer repetitions and shorter thread runs (under a minute)")
    p.add_argument("--endpoint", metavar="URL",
                   help="run against an existing elevator-server (tcp://HOST:PORT or HOST:PORT) "
                        "instead of starting one (default: $ELEVATOR_URL's, if set); uses (and "
                        "creates) its 'benchmarks' database")
    p.add_argument("--threads", type=_thread_counts, default=(1, 4, 16, 64), metavar="N,N,...",
                   help="thread counts of the shared-client Get runs (default: 1,4,16,64)")
    p.add_argument("--out", default="bench-results", metavar="DIR",
                   help="where results.json and results.png go (default: ./bench-results)")
    p.add_argument("--no-redis", action="store_true", help="skip the redis anchor")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--write-readme", nargs="?", const="", default=None, metavar="PATH",
                   help="write the figures into the generated section of PATH (default: "
                        "benchmarks/README.rst), and results.json/.png into results/ beside it")
    # A tiny run for the test suite; not a benchmark.
    p.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.endpoint is None:
        from pyelevator_pool import urls
        try:
            env = urls.from_environment()
        except ValueError as exc:
            parser.error(str(exc))
        args.endpoint = env[0] if env is not None else None
    try:
        import matplotlib  # noqa: F401
        import plyvel  # noqa: F401
        import tqdm  # noqa: F401
    except ImportError as exc:
        print(f"benchmarks: {exc.name} is missing: pip install -e '.[server,bench]'",
              file=sys.stderr)
        return 2
    from . import report
    from .suite import Options, run_suite

    preset = Options.smoke if args.smoke else Options.quick if args.quick else Options.full
    options = preset(endpoint=args.endpoint, use_redis=not args.no_redis,
                     progress=not args.no_progress and sys.stderr.isatty(),
                     **({"threads": args.threads} if not args.smoke or "--threads" in
                        (argv if argv is not None else sys.argv) else {}))
    os.makedirs(args.out, exist_ok=True)
    started = time.monotonic()
    result = run_suite(options, log=lambda s: print(s, file=sys.stderr, flush=True))
    targets = report.evaluate_targets(result["records"])
    result["meta"]["elapsed_s"] = round(time.monotonic() - started, 1)
    result["meta"]["command"] = " ".join(["python -m benchmarks", *(
        sys.argv[1:] if argv is None else argv)])
    json_path = os.path.join(args.out, "results.json")
    png_path = os.path.join(args.out, "results.png")
    report.write_json(json_path, result, targets)
    report.write_png(png_path, result)
    print(report.format_table(result, targets))
    print(f"\n{len(result['records'])} records in {json_path}; chart in {png_path} "
          f"({result['meta']['elapsed_s']} s)")
    if args.write_readme is not None:
        readme = args.write_readme or report.README
        figures = os.path.join(os.path.dirname(os.path.abspath(readme)), "results")
        os.makedirs(figures, exist_ok=True)
        report.write_json(os.path.join(figures, "results.json"), result, targets)
        report.write_png(os.path.join(figures, "results.png"), result)
        report.write_readme(readme, result, targets, image="results/results.png")
        print(f"figures written into {readme} (and {figures}/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
