"""Dictionary transforms that MONAI lacks: report sentences → prompt token ids, and grayscale loading help.

Text chain used by the training configs (``configs/train_diffusion.json`` key ``text_transforms``)::

    {"sentences": [str, ...]}
      → RandSentenceSubsetd   → "report": 1..max_sentences sentences joined by spaces
      → Tokenized             → "prompt_ids": LongTensor (77,)
      → RandNullPromptd       → "prompt_ids" replaced by the null prompt with probability ``prob``

All randomness comes from ``self.R`` (MONAI ``Randomizable``), so ``monai.utils.set_determinism`` and the
per-worker seeding of ``monai.data.DataLoader`` make the draws reproducible.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, RandomizableTransform

from scripts.networks.text import MAX_TOKENS, tokenize


def to_grayscale(image):
    """PIL image → 8-bit grayscale ("L"); the ``converter`` of MONAI's ``PILReader`` in the load transforms."""
    return image if image.mode == "L" else image.convert("L")


class RandSentenceSubsetd(Randomizable, MapTransform):
    """Pick a random subset of 1..``max_sentences`` (inclusive) sentences of a report and join them.

    The number of sentences is uniform on 1..min(``max_sentences``, number available); the chosen sentences
    keep their report order (findings before impression). An empty list gives ``""``.

    Args:
        keys: key of the list of sentences (``"sentences"``).
        output_key: key of the joined text (``"report"``).
        max_sentences: largest number of sentences per sample (5 in the released recipe).
        shuffle: put the chosen sentences in random order instead of report order.
    """

    def __init__(
        self,
        keys: KeysCollection = "sentences",
        output_key: str = "report",
        max_sentences: int = 5,
        shuffle: bool = False,
        allow_missing_keys: bool = False,
    ):
        MapTransform.__init__(self, keys, allow_missing_keys)
        if int(max_sentences) < 1:
            raise ValueError(f"max_sentences must be at least 1, got {max_sentences}.")
        self.output_key = output_key
        self.max_sentences = int(max_sentences)
        self.shuffle = shuffle

    def choose(self, sentences: Sequence[str]) -> str:
        if isinstance(sentences, str):
            raise TypeError(f"'{self.keys[0]}' must be a list of sentences, got a string: {sentences[:40]!r}.")
        if len(sentences) == 0:
            return ""
        count = int(self.R.randint(1, min(self.max_sentences, len(sentences)) + 1))  # + 1: the upper bound is inclusive
        chosen = self.R.choice(len(sentences), size=count, replace=False)
        order = chosen if self.shuffle else sorted(chosen)
        return " ".join(str(sentences[index]).strip() for index in order)

    def randomize(self, data=None) -> None:  # the draws happen in ``choose``, one per key
        pass

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.output_key] = self.choose(d[key])
        return d


class Tokenized(MapTransform):
    """Tokenize a text with the bundle's CLIP tokenizer: ``str`` → LongTensor (77,) of token ids.

    Text longer than 77 tokens is truncated silently (a training report is often longer; the text encoder
    has 77 positions).

    Args:
        keys: key of the text (``"report"``).
        tokenizer: the bundle's tokenizer (``scripts.networks.text.load_tokenizer``).
        output_key: key of the ids (``"prompt_ids"``).
    """

    def __init__(
        self,
        keys: KeysCollection = "report",
        tokenizer=None,
        output_key: str = "prompt_ids",
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        if tokenizer is None:
            raise ValueError("Tokenized needs the bundle's tokenizer: pass tokenizer=@tokenizer.")
        self.tokenizer = tokenizer
        self.output_key = output_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.output_key] = tokenize(self.tokenizer, [str(d[key])], warn_truncation=False)[0]
        return d


class RandNullPromptd(RandomizableTransform, MapTransform):
    """Replace the prompt ids by the null prompt with probability ``prob`` (for classifier-free guidance).

    Args:
        keys: key of the ids (``"prompt_ids"``), LongTensor (77,).
        null_prompt_ids: LongTensor (77,), ``scripts.networks.text.null_prompt_ids(tokenizer, style)`` — the one
            null prompt that sampling also uses.
        prob: probability of the replacement (0.1 in the released recipe).
        text_key: key of the text that the ids came from; set to ``""`` on replacement (``None``: leave it).
    """

    def __init__(
        self,
        keys: KeysCollection = "prompt_ids",
        null_prompt_ids: torch.Tensor | None = None,
        prob: float = 0.1,
        text_key: str | None = "report",
        allow_missing_keys: bool = False,
    ):
        MapTransform.__init__(self, keys, allow_missing_keys)
        if not 0.0 <= float(prob) <= 1.0:
            raise ValueError(f"null_prompt_prob must be in [0, 1], got {prob}.")
        RandomizableTransform.__init__(self, prob=float(prob))
        if null_prompt_ids is None or tuple(torch.as_tensor(null_prompt_ids).shape) != (MAX_TOKENS,):
            raise ValueError(
                f"null_prompt_ids must be a LongTensor of shape ({MAX_TOKENS},): pass "
                "scripts.networks.text.null_prompt_ids(@tokenizer, @null_prompt)."
            )
        self.null_prompt_ids = torch.as_tensor(null_prompt_ids, dtype=torch.long)
        self.text_key = text_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            d[key] = self.null_prompt_ids.clone()
        if self.text_key is not None and self.text_key in d:
            d[self.text_key] = ""
        return d
