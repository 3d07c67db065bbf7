"""`xlstm-convert`: models in and out of the Hugging Face xLSTM format.

    xlstm-convert from-hf path/to/xLSTM-7b runs/xlstm7b        # a Hugging Face folder -> our export
    xlstm-convert to-hf runs/my_run/export hf/my_model         # our xlstm_large export -> a Hugging Face folder

The Hugging Face folder is what `transformers.xLSTMForCausalLM.from_pretrained` loads (NX-AI's xLSTM-7B
layout); our export is what `xlstm-eval`, `xlstm-generate` and `train.py init_from=` read.
"""

from __future__ import annotations

import argparse
import logging

from xlstm_lm.cli.errors import exit_on_user_error
from xlstm_lm.interop.huggingface import WEIGHT_MODES, export_folder, import_folder

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="xlstm-convert", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    from_hf = commands.add_parser("from-hf", help="a Hugging Face xLSTM folder -> our export folder")
    to_hf = commands.add_parser("to-hf", help="our xlstm_large export folder -> a Hugging Face xLSTM folder")
    for command in (from_hf, to_hf):
        command.add_argument("source")
        command.add_argument("destination", help="a new folder (an existing one must be empty)")
    to_hf.add_argument("--weight-mode", choices=WEIGHT_MODES, default="single",
                       help="fused stores q, k, v, o and the gates as one matrix each (faster inference there)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    with exit_on_user_error(log):
        if args.command == "from-hf":
            written = import_folder(args.source, args.destination)
        else:
            written = export_folder(args.source, args.destination, args.weight_mode)
    print(f"wrote {written}")


if __name__ == "__main__":
    main()
