"""teachkit: learn pre-training and fine-tuning of language models by doing both.

Read the lesson in this order; each file is short, shape-commented and free of speed tricks, and the
notebooks check their own versions of the same steps against it:

1. `config.py`        `ModelConfig` for BERT and GPT with presets, `TrainConfig`, the course BERT's recipe
2. `tokenization.py`  WordPiece (BERT) and byte-level BPE (GPT) tokenizers, pairs with segment ids
3. `objectives.py`    the 80/10/10 masking rule, next-sentence pairs, causal-LM targets, every loss
4. `model.py`         embeddings, attention, one transformer layer, BERT and GPT, their heads
5. `tasks.py`         what a training step trains on: deterministic batches, losses as sums, evaluation
6. `train.py`         the training step and loop, the same for pre-training and fine-tuning
7. `finetune.py`      fine-tuning choices: freezing layers and label budgets

Everything else lives in sub-packages named for what they hold, and imports the lesson (never the
other way round):

- `course/`       what the notebooks call: probes, figures, explorers, exercise checks, live curves, fast mode
- `experiments/`  pre-training runs, the fair fine-tuning comparison, the demo, the command line
- `app/`          the training playground
- `data/`         named datasets, pre-training corpora, offline mirrors
- `machinery/`    checkpoints, files, signals, devices and precision, CPU speed-ups, Hugging Face weights
"""

from teachkit.machinery.threads import set_up_threads as _set_up_threads

# Before anything loads PyTorch's OpenMP, which reads its settings once: threads that wait without
# spinning, and no more of them than the CPU quota allows (teachkit/machinery/threads.py).
_set_up_threads()

__version__ = "0.1.0"
