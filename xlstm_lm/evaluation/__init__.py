"""Evaluation of trained language models: long-context perplexity and text generation (DESIGN.md §12).

    documents.load_documents -> perplexity.evaluate_context -> plot.plot_results
                                generation.generate

Library code only: the Hydra entry points are `xlstm_lm.cli.eval` and `xlstm_lm.cli.generate`; they read the
model and its tokenizer from a checkpoint with `xlstm_lm.cli.loading.load_checkpoint`.
"""
