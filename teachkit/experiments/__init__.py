"""Experiments built on the lesson: pre-training runs, the fair fine-tuning comparison, the demo, the command line."""
