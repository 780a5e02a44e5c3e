"""The prior's token layout: the tokenizer's K codes, then the special tokens it needs.

    0 .. K-1            image codes, in raster order (row-major over the h x w grid)
    K                   start token of an unconditional sequence
    K+1 .. K+C          one class token per class (the class-conditional prefix)
    K+C+1               the null class, for classifier-free guidance (only when C > 0)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class PriorVocabulary:
    codebook_size: int
    num_classes: int = 0

    @property
    def start_token(self) -> int:
        return self.codebook_size

    def class_token(self, label: int) -> int:
        return self.codebook_size + 1 + label

    @property
    def null_token(self) -> int:
        if not self.num_classes:
            raise ValueError("an unconditional prior has no null class")
        return self.codebook_size + 1 + self.num_classes

    @property
    def size(self) -> int:
        return self.codebook_size + 1 + self.num_classes + (1 if self.num_classes else 0)

    def prefix(self, labels: torch.Tensor | None, batch_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """`b 1` prefix tokens: the class token per label (-1 = null class), or the start token."""
        if labels is None:
            if self.num_classes:
                return torch.full((batch_size, 1), self.null_token, dtype=torch.long, device=device)
            return torch.full((batch_size, 1), self.start_token, dtype=torch.long, device=device)
        if not self.num_classes:
            raise ValueError("this prior is unconditional: pass no class labels")
        labels = torch.as_tensor(labels, device=device).long()
        if labels.numel() and (labels.min() < -1 or labels.max() >= self.num_classes):
            raise ValueError(
                f"class labels must lie in [0, {self.num_classes - 1}] (or -1 for the null class), "
                f"got values in [{labels.min().item()}, {labels.max().item()}]"
            )
        tokens = torch.where(labels < 0, self.null_token, self.codebook_size + 1 + labels)
        return tokens.view(-1, 1)

    def sequences(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The prior's input: `b h w` (or `b t` raster-order) codes -> `b 1+h*w` long, the prefix then the codes.

        `labels` (`b`; -1 = null class) picks each row's class token; None gives the start token, or
        the null class on a conditional prior. A `b 0` `codes` gives the prefix alone.
        """
        codes = codes.flatten(1).long()
        prefix = self.prefix(labels, codes.shape[0], codes.device)
        if prefix.shape[0] != codes.shape[0]:
            raise ValueError(f"{prefix.shape[0]} class labels for {codes.shape[0]} code sequences")
        return torch.cat([prefix, codes], dim=1)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)
