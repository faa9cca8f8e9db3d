# Re-implementation of `image_processing_phi3_v.py` of microsoft/Phi-3.5-vision-instruct (remote code on
# the Hugging Face Hub), written for offline use: the tiny test checkpoints of vlm_gateway.testing.tiny and
# users without Hub access. Same class name, config keys (`num_crops`, `image_mean`, `image_std`,
# `do_convert_rgb`), outputs and token counts as the published file; it uses PIL + torch instead of
# torchvision (the published resize is torchvision's PIL bilinear resize, the same operation).
"""Phi-3-V image processor: the HD transform.

Each image is (if portrait, transposed and) resized so that its width is `scale * 336` with the largest
`scale` whose crop grid `scale x ceil(scale / ratio)` has at most `num_crops` crops, keeping the aspect
ratio; its height is then padded (white, centred) to a multiple of 336 and the transpose undone. The
result is cut into 336 x 336 crops; a bicubic 336 x 336 resize of the whole image (the global image)
comes first. `pixel_values` is `(num_images, num_crops + 1, 3, 336, 336)` (zero crops pad the rest),
`image_sizes` the padded `(height, width)`, and `num_img_tokens` per image::

    (h_crops * w_crops + 1) * 144 + 1 + (h_crops + 1) * 12

(144 = 12 x 12 merged patches per crop, a line-separator token per row of 12, one global separator).
"""

import math

import numpy as np
import torch
from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.utils import TensorType

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
CROP = 336  # CLIP ViT-L/14-336 input size
TOKENS_PER_CROP = 144  # 24 x 24 patches, 2 x 2 merged
ROW_TOKENS = 12  # merged patches per crop row


def hd_size(width: int, height: int, hd_num: int) -> tuple[int, int]:
    """Size (width, height) of an image after the HD transform's resize and padding."""
    transposed = width < height
    if transposed:
        width, height = height, width
    ratio = width / height
    scale = 1
    while scale * math.ceil(scale / ratio) <= hd_num:
        scale += 1
    scale -= 1
    new_w = int(scale * CROP)
    new_h = int(new_w / ratio)
    padded_h = int(math.ceil(new_h / CROP) * CROP)
    return (padded_h, new_w) if transposed else (new_w, padded_h)


def num_tokens_for_padded(width: int, height: int) -> int:
    h, w = height // CROP, width // CROP
    return int((h * w + 1) * TOKENS_PER_CROP + 1 + (h + 1) * ROW_TOKENS)


def padding_336(img: Image.Image) -> Image.Image:
    """Pad the height to a multiple of 336, centred, with white."""
    width, height = img.size
    target = int(math.ceil(height / CROP) * CROP)
    top = int((target - height) / 2)
    if target == height:
        return img
    out = Image.new("RGB", (width, target), (255, 255, 255))
    out.paste(img, (0, top))
    return out


def HD_transform(img: Image.Image, hd_num: int = 16) -> Image.Image:
    width, height = img.size
    trans = False
    if width < height:
        img = img.transpose(Image.TRANSPOSE)
        trans = True
        width, height = img.size
    ratio = width / height
    scale = 1
    while scale * math.ceil(scale / ratio) <= hd_num:
        scale += 1
    scale -= 1
    new_w = int(scale * CROP)
    new_h = int(new_w / ratio)
    img = img.resize((new_w, new_h), Image.BILINEAR)
    img = padding_336(img)
    if trans:
        img = img.transpose(Image.TRANSPOSE)
    return img


def pad_to_max_num_crops_tensor(images: torch.Tensor, max_crops: int = 5) -> torch.Tensor:
    """images: (num_crops, 3, H, W) -> (max_crops, 3, H, W), zero-padded."""
    b, _, h, w = images.shape
    if b < max_crops:
        pad = torch.zeros(max_crops - b, 3, h, w, dtype=images.dtype, device=images.device)
        images = torch.cat([images, pad], dim=0)
    return images


def _to_pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = arr.transpose(1, 2, 0)  # CHW -> HWC
    if arr.dtype != np.uint8:
        arr = (arr * 255 if arr.max() <= 1.0 else arr).clip(0, 255).astype(np.uint8)
    return Image.fromarray(arr.squeeze(-1) if arr.ndim == 3 and arr.shape[-1] == 1 else arr)


class Phi3VImageProcessor(BaseImageProcessor):
    """Phi-3-V image processor (HD transform with up to `num_crops` 336-px crops plus a global image).

    Published defaults: `num_crops=1` in the class; Phi-3.5-vision-instruct's preprocessor_config.json
    sets 4 (16 is recommended for single-image use).
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        num_crops: int = 1,
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
        do_convert_rgb: bool = True,
        num_img_tokens: int = TOKENS_PER_CROP,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.num_crops = num_crops
        self.num_img_tokens = num_img_tokens  # per crop
        self.image_mean = image_mean
        self.image_std = image_std
        self.do_convert_rgb = do_convert_rgb

    def calc_num_image_tokens(self, images) -> list[int]:
        """Image tokens per image (list of PIL images or one image)."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        return [self.calc_num_image_tokens_from_image_size(*_to_pil(im).size) for im in images]

    def calc_num_image_tokens_from_image_size(self, width: int, height: int) -> int:
        """Image tokens for an image of `width` x `height` pixels."""
        new_width, new_height = hd_size(width, height, self.num_crops)
        return num_tokens_for_padded(new_width, new_height)

    def preprocess(
        self,
        images,
        image_mean=None,
        image_std=None,
        do_convert_rgb=None,
        return_tensors: str | TensorType | None = None,
        **kwargs,
    ) -> BatchFeature:
        image_mean = image_mean if image_mean is not None else self.image_mean
        image_std = image_std if image_std is not None else self.image_std
        do_convert_rgb = do_convert_rgb if do_convert_rgb is not None else self.do_convert_rgb
        if not isinstance(images, (list, tuple)):
            images = [images]
        images = [_to_pil(im) for im in images]
        if do_convert_rgb:
            images = [im.convert("RGB") for im in images]

        mean = torch.tensor(image_mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(image_std, dtype=torch.float32).view(3, 1, 1)

        def to_tensor(im: Image.Image) -> torch.Tensor:  # ToTensor + Normalize
            t = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
            return (t - mean) / std

        # HD transform: padded to multiples of 336, then tensor + normalize
        hd_images = [to_tensor(HD_transform(im, hd_num=self.num_crops)) for im in images]
        # global image: the whole HD image resized to 336 x 336
        global_image = [
            torch.nn.functional.interpolate(im.unsqueeze(0).float(), size=(CROP, CROP), mode="bicubic").to(im.dtype)
            for im in hd_images
        ]
        shapes = [[im.size(1), im.size(2)] for im in hd_images]  # (h, w), multiples of 336
        num_img_tokens = [num_tokens_for_padded(w, h) for h, w in shapes]
        # (3, h, w) -> (h//336 * w//336, 3, 336, 336), row-major crops
        hd_crops = [
            im.reshape(1, 3, h // CROP, CROP, w // CROP, CROP)
            .permute(0, 2, 4, 1, 3, 5)
            .reshape(-1, 3, CROP, CROP)
            .contiguous()
            for im, (h, w) in zip(hd_images, shapes, strict=True)
        ]
        # global image first, then the crops; zero-padded to num_crops + 1
        hd_crops = [torch.cat([g, c], dim=0) for g, c in zip(global_image, hd_crops, strict=True)]
        pixel_values = torch.stack([pad_to_max_num_crops_tensor(c, self.num_crops + 1) for c in hd_crops], dim=0)

        data = {"pixel_values": pixel_values, "image_sizes": shapes, "num_img_tokens": num_img_tokens}
        return BatchFeature(data=data, tensor_type=return_tensors)


__all__ = ["Phi3VImageProcessor"]
