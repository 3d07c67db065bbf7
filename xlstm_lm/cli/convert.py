"""`xlstm-convert`: models in and out of the Hugging Face xLSTM format, and in from the official xlstm package.

    xlstm-convert from-hf path/to/xLSTM-7b runs/xlstm7b        # a Hugging Face folder -> our export
    xlstm-convert to-hf runs/my_run/export hf/my_model         # our xlstm_large export -> a Hugging Face folder
    xlstm-convert from-official model.yaml model.pt runs/paper # an xLSTMLMModel's config + state dict -> our export

The Hugging Face folder is what `transformers.xLSTMForCausalLM.from_pretrained` loads (NX-AI's xLSTM-7B
layout); the official model is the `xlstm` package's paper model, `xLSTMLMModel` (its config as YAML or JSON,
its state dict as .pt or .safetensors: xlstm_lm/interop/official.py); our export is what `xlstm-eval`,
`xlstm-generate` and `train.py init_from=` read.
"""

from __future__ import annotations

import argparse
import logging

from xlstm_lm.cli.errors import exit_on_user_error
from xlstm_lm.interop.huggingface import WEIGHT_MODES, export_folder, import_folder
from xlstm_lm.interop.official import import_official

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="xlstm-convert", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    from_hf = commands.add_parser("from-hf", help="a Hugging Face xLSTM folder -> our export folder")
    to_hf = commands.add_parser("to-hf", help="our xlstm_large export folder -> a Hugging Face xLSTM folder")
    for command in (from_hf, to_hf):
        command.add_argument("source")
        command.add_argument("destination", help="a new folder (an existing one must be empty)")
    from_official = commands.add_parser(
        "from-official", help="the official xlstm package's xLSTMLMModel (config + state dict) -> our export folder")
    from_official.add_argument("config", help="the xLSTMLMModelConfig fields, YAML or JSON (top level or model:)")
    from_official.add_argument("weights", help="the model's state dict: torch.save file (.pt) or .safetensors")
    from_official.add_argument("destination", help="a new folder (an existing one must be empty)")
    to_hf.add_argument("--weight-mode", choices=WEIGHT_MODES, default="single",
                       help="fused stores q, k, v, o and the gates as one matrix each (faster inference there)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    with exit_on_user_error(log):
        if args.command == "from-hf":
            written = import_folder(args.source, args.destination)
        elif args.command == "from-official":
            written = import_official(args.config, args.weights, args.destination)
        else:
            written = export_folder(args.source, args.destination, args.weight_mode)
    print(f"wrote {written}")


if __name__ == "__main__":
    main()
