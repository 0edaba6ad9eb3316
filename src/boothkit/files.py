"""The names of what boothkit writes: a run folder's files and folders, and a checkpoint's.

One home for each name, so the loop that writes a file and the commands that read it back
(generate, grid, morph, export, resume) can never disagree about it.

    runs/mittens/
      boothkit_run.json                   RUN_MARKER: status (running, interrupted, failed, complete)
      config.toml                         CONFIG_FILE: the resolved configuration
      pytorch_lora_weights.safetensors    LORA_FILE (LoRA, pivotal)
      learned_embeds.safetensors          EMBEDDINGS_FILE (textual inversion, pivotal)
      model/ , model.safetensors          MODEL_DIR, SINGLE_FILE (full fine-tune)
      samples/step-NNNNNN.png             SAMPLES_DIR
      loss.png, summary.json              LOSS_PLOT, SUMMARY_FILE
      logs/train.jsonl, logs/tensorboard  LOGS_DIR, TRAIN_LOG
      checkpoints/step-NNNNNN/            CHECKPOINTS_DIR
        trainable.safetensors             CHECKPOINT_WEIGHTS
        manifest.json                     CHECKPOINT_MANIFEST
"""

from __future__ import annotations

RUN_MARKER = "boothkit_run.json"
CONFIG_FILE = "config.toml"
SUMMARY_FILE = "summary.json"
LORA_FILE = "pytorch_lora_weights.safetensors"
EMBEDDINGS_FILE = "learned_embeds.safetensors"
MODEL_DIR = "model"
SINGLE_FILE = "model.safetensors"
SAMPLES_DIR = "samples"
LOSS_PLOT = "loss.png"
LOGS_DIR = "logs"
TRAIN_LOG = "train.jsonl"
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_WEIGHTS = "trainable.safetensors"
CHECKPOINT_MANIFEST = "manifest.json"


def step_name(step: int) -> str:
    """``step-000200``: how samples and checkpoints are named by step (sorts by step)."""
    return f"step-{step:06d}"
