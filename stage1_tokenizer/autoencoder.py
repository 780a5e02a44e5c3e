"""What every stage-1 model shares beyond saving and loading: the members the pipelines program against
(`pipelines/protocols.py`). Subclasses set the capability flags and add their own latent methods."""

from __future__ import annotations

import torch

from vqgen.pretrained import PretrainedModel


class Autoencoder(PretrainedModel):
    package = "stage1_tokenizer"
    is_discrete = False  # tokenize, detokenize, codebook_size, grid_shape
    has_elbo = False  # encode gives q(z|x); decode_logits, log_likelihood and negative_elbo apply
    can_sample = False  # sampling_settings and sample_batch
    requires_labels = False

    @property
    def autoencoder(self) -> Autoencoder:
        """The model that encodes and decodes images: this one (a pipeline answers with its tokenizer)."""
        return self

    @property
    def class_names(self) -> list[str] | None:
        """The classes this model is conditioned on; None unless it takes labels (a CVAE)."""
        return None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device
