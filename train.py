"""Train an xLSTM language model: `python train.py model=xlstm_7_1` (see README.md)."""

from xlstm_lm.cli.train import main

if __name__ == "__main__":
    main()
