"""`xlstm-lm-eval`: lm-evaluation-harness's own command line, with our model type `xlstm_lm` registered.

    xlstm-lm-eval --model xlstm_lm --model_args pretrained=outputs/<date>/<time>/export,max_length=4096 \
        --tasks lambada_openai,hellaswag,wikitext --batch_size 8 --device cuda

Every option is lm_eval's (`xlstm-lm-eval --help`; model_args in `xlstm_lm.cli.lm_eval_model`). The harness
discovers no model plugins, so this command imports the adapter, which registers the type, and hands over.
Standard tasks download their data from the Hugging Face hub; tasks of local files run offline.
"""

from __future__ import annotations

import sys

INSTALL_HINT = 'lm-evaluation-harness is not installed: pip install "lm_eval>=0.4.13,<0.5" (or the dev extra)'


def main() -> None:
    try:
        import xlstm_lm.cli.lm_eval_model  # noqa: F401 (registers the model type xlstm_lm)
        from lm_eval.__main__ import cli_evaluate
    except ModuleNotFoundError as error:
        if (error.name or "").partition(".")[0] != "lm_eval":
            raise
        sys.exit(INSTALL_HINT)
    cli_evaluate()


if __name__ == "__main__":
    main()
