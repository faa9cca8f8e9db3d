# Re-implementation of `processing_phi3_v.py` of microsoft/Phi-3.5-vision-instruct (remote code on the
# Hugging Face Hub), written for offline use: the tiny test checkpoints of vlm_gateway.testing.tiny and
# users without Hub access. Same class name, attributes (`img_tokens`, `num_img_tokens`,
# `special_image_token`), methods (`calc_num_image_tokens`, `calc_num_image_tokens_from_image_size`) and
# `__call__` output as the published file.
"""Phi-3-V processor: the Phi3V image processor plus the Llama tokenizer.

The prompt names images with numbered markers `<|image_1|>`, `<|image_2|>`, ... (plain text, several
tokens each). The text between markers is tokenized chunk by chunk (each chunk with the tokenizer's
special tokens, i.e. its leading `<s>`), and every marker `<|image_i|>` is replaced by
`num_img_tokens[i - 1]` copies of the id `-i` (the model embeds negative ids as image features; vLLM
uses `<|image|>`, id 32044, instead). Markers must be numbered 1..n with n = the number of images.
"""

import re
from collections.abc import Sequence

import torch
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.utils import TensorType

from .image_processing_phi3_v import Phi3VImageProcessor  # noqa: F401  (copied with this file)

IMAGE_MARKER = re.compile(r"<\|image_\d+\|>")


class _ImageMarkers(Sequence):
    """`<|image_1|>`, `<|image_2|>`, ... (the published code keeps a list of a million of them)."""

    def __init__(self, n: int = 1_000_000) -> None:
        self._n = n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._n))]
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(i)
        return f"<|image_{i + 1}|>"


class Phi3VProcessor(ProcessorMixin):
    """Wraps a `Phi3VImageProcessor` and a Llama tokenizer into one processor."""

    special_image_token = "<|image|>"

    def __init__(self, image_processor, tokenizer, **kwargs):
        super().__init__(image_processor, tokenizer, **kwargs)
        self.num_img_tokens = image_processor.num_img_tokens if hasattr(image_processor, "num_img_tokens") else 144
        self.img_tokens = _ImageMarkers()

    def __call__(
        self,
        text=None,
        images=None,
        padding=False,
        truncation=None,
        max_length=None,
        return_tensors=TensorType.PYTORCH,
    ) -> BatchFeature:
        """`text`: one prompt with `<|image_i|>` markers; `images`: the images they refer to, in order.

        Returns `input_ids` (image positions hold `-i`), `attention_mask`, and, with images,
        `pixel_values` `(n, num_crops + 1, 3, 336, 336)` and `image_sizes` `(n, 2)`.
        """
        image_inputs = self.image_processor(images, return_tensors=return_tensors) if images is not None else {}
        return self._convert_images_texts_to_inputs(
            image_inputs, text, padding=padding, truncation=truncation, max_length=max_length,
            return_tensors=return_tensors,
        )

    def calc_num_image_tokens(self, images) -> list[int]:
        return self.image_processor.calc_num_image_tokens(images)

    def calc_num_image_tokens_from_image_size(self, width: int, height: int) -> int:
        return self.image_processor.calc_num_image_tokens_from_image_size(width, height)

    @property
    def special_image_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.special_image_token)

    def get_special_image_token_id(self) -> int:
        return self.special_image_token_id

    def _convert_images_texts_to_inputs(self, images, texts, padding=False, truncation=None, max_length=None,
                                        return_tensors=None) -> BatchFeature:
        if not len(images):
            model_inputs = self.tokenizer(texts, return_tensors=return_tensors, padding=padding,
                                          truncation=truncation, max_length=max_length)
            return BatchFeature(data={**model_inputs})

        if isinstance(texts, (list, tuple)):
            if len(texts) != 1:
                raise ValueError("Phi3VProcessor takes one prompt when images are given")
            texts = texts[0]

        prompt_chunks = [self.tokenizer(chunk).input_ids for chunk in IMAGE_MARKER.split(texts)]

        if "num_img_tokens" in images:
            num_img_tokens = list(images["num_img_tokens"])
        else:
            num_img_tokens = [n * self.num_img_tokens for n in images["num_crops"]]
        num_img_tokens = [int(n) for n in num_img_tokens]
        pixel_values, image_sizes = images["pixel_values"], images["image_sizes"]

        # image markers must be numbered 1..n, n = number of images
        image_tags = IMAGE_MARKER.findall(texts)
        image_ids = [int(s.split("|")[1].split("_")[-1]) for s in image_tags]
        unique_image_ids = sorted(set(image_ids))
        if unique_image_ids != list(range(1, len(unique_image_ids) + 1)):
            raise ValueError(f"image_ids must start from 1 and be consecutive, e.g. [1, 2, 3]; got {unique_image_ids}")
        if len(unique_image_ids) != len(pixel_values):
            raise ValueError(f"total images must be the same as the number of image tags, got "
                             f"{len(unique_image_ids)} image tags and {len(pixel_values)} images")

        image_ids_pad = [[-iid] * num_img_tokens[iid - 1] for iid in image_ids]

        def insert_separator(chunks, seps):
            if len(chunks) > len(seps):
                seps = [*seps, []]
            return [ele for pair in zip(chunks, seps, strict=True) for ele in pair]

        input_ids = []
        for x in insert_separator(prompt_chunks, image_ids_pad):
            input_ids.extend(x)

        input_ids = torch.tensor(input_ids, dtype=torch.long).unsqueeze(0)
        attention_mask = (input_ids > -1000000).to(torch.long)
        return BatchFeature(data={"input_ids": input_ids, "attention_mask": attention_mask,
                                  "pixel_values": pixel_values, "image_sizes": image_sizes})

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self):
        tokenizer_input_names = self.tokenizer.model_input_names
        image_processor_input_names = self.image_processor.model_input_names
        return list(dict.fromkeys(tokenizer_input_names + image_processor_input_names))


__all__ = ["Phi3VProcessor"]
