"""Models in and out of the project: Hugging Face xLSTM folders (NX-AI's xLSTM-7B layout)."""
