"""Augmentation presets, and the pieces both data paths share to apply them.

`--augment` names a preset; `preset()` turns it (with `--no-hflip`, `--mixup`, `--cutmix`) into a
`Recipe`, the one description that the PIL path (`build_transform`, image by image) and the
decode-once path (`DecodedLoader`, whole uint8 batches) both follow:

    none    resize the shorter side, centre crop (what evaluation does)
    flip    none + horizontal flips
    shift   flip + a translation of up to 1/8 of the side each way, the uncovered border black
            (CIFAR's pad-and-crop: new positions at the scale the model is tested at)
    light   random resized crop + horizontal flips
    medium  light + TrivialAugmentWide + random erasing (p 0.25)
    strong  light + RandAugment (2 ops, magnitude 9) + random erasing (p 0.25)
            + mixup (alpha 0.2) or cutmix (alpha 1.0), one of the two per batch

Crop scale follows the resolution: `crop_scale(side)` keeps at least 60% of the area when the
image cropped from is 64 px or smaller and 35% from 128 px up (linear in between), `side` being
the smaller of the image's shorter side and the input size. A crop of a third of a 28-px digit is
a few strokes; of a 224-px photo, still an object. Mixup and cutmix act on whole batches and
produce probability targets (`BatchMixer`, applied by `MixedLoader`), which
`nn.CrossEntropyLoss` accepts as they are, label smoothing included.

Policies (TrivialAugmentWide, RandAugment) are torchvision's own, run on uint8 tensors. On a batch
torchvision applies one drawn operation to all images, so the tensor path runs them on chunks of
`POLICY_CHUNK` images: measured on the reference CPU (128 images of 64 px, 3 channels) image by
image costs 34 ms, chunks of 8 about 11 ms, the whole batch about 20 ms but with one operation for
128 images; chunks keep 16 different operations per batch at a third of the per-image cost.
Every random draw of the tensor path comes from the loader's generator (policies run inside
`torch.random.fork_rng`, seeded from it), so a seed gives the same batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

from tlearn.config import AUGMENTS
from tlearn.errors import TlearnError

AUGMENTATIONS: tuple[str, ...] = AUGMENTS

RATIO = (3 / 4, 4 / 3)  # aspect ratios of random resized crops (torchvision's)
ERASING_P = 0.25
ERASING_SCALE = (0.02, 1 / 3)  # area fraction of an erased box (Zhong et al., torchvision)
ERASING_RATIO = (0.3, 3.3)
STRONG_MIXUP, STRONG_CUTMIX = 0.2, 1.0  # torchvision's classification recipe
POLICY_CHUNK = 8
SHIFT = 0.125  # the largest translation, a fraction of the side (4 px of CIFAR's 32)


@dataclass(frozen=True)
class Recipe:
    """What one preset does to a training image; the flags of `--augment` resolved."""

    name: str = "none"
    crops: bool = False  # random resized crops (else resize + centre crop)
    hflip: bool = False
    shift: float = 0.0  # largest translation each way, a fraction of the side (0 = off)
    policy: str | None = None  # "trivialaugment" | "randaugment"
    erasing: float = 0.0  # probability of erasing one random box per image
    mixup: float = 0.0  # Beta(alpha, alpha) mixing of image pairs; 0 = off
    cutmix: float = 0.0

    @property
    def mixes(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0


def preset(
    augment: str, *, hflip: bool = True, mixup: float | None = None, cutmix: float | None = None
) -> Recipe:
    """The recipe of a preset; `mixup`/`cutmix` (alphas) override the preset's when given."""
    if augment not in AUGMENTATIONS:
        raise TlearnError(f"unknown --augment {augment!r}; use one of {', '.join(AUGMENTATIONS)}.")
    level = AUGMENTATIONS.index(augment)  # none < flip < light < medium < strong
    strong = augment == "strong"
    return Recipe(
        name=augment,
        crops=level >= AUGMENTATIONS.index("light"),
        hflip=hflip and level >= AUGMENTATIONS.index("flip"),
        shift=SHIFT if augment == "shift" else 0.0,  # crops (light and up) move images already
        policy={"medium": "trivialaugment", "strong": "randaugment"}.get(augment),
        erasing=ERASING_P if level >= AUGMENTATIONS.index("medium") else 0.0,
        mixup=float(mixup if mixup is not None else (STRONG_MIXUP if strong else 0.0)),
        cutmix=float(cutmix if cutmix is not None else (STRONG_CUTMIX if strong else 0.0)),
    )


def crop_scale(side: int) -> tuple[float, float]:
    """Area range of random resized crops for images of this resolution (see the module doc)."""
    t = min(1.0, max(0.0, (side - 64) / 64))
    return (round(0.6 - 0.25 * t, 4), 1.0)


def policy_transform(name: str) -> v2.Transform:
    if name == "trivialaugment":
        return v2.TrivialAugmentWide()
    if name == "randaugment":
        return v2.RandAugment(num_ops=2, magnitude=9)
    raise ValueError(f"unknown policy {name!r}")


# --- the tensor path: whole batches -------------------------------------------------------------


def apply_policy(
    images: torch.Tensor,
    policy: v2.Transform,
    generator: torch.Generator | None,
    chunk: int = POLICY_CHUNK,
) -> torch.Tensor:
    """uint8 `[B, C, H, W]` -> the same, each chunk of `chunk` images given its own operation.

    torchvision draws from the global RNG: it is forked and seeded from `generator`, so the
    caller's generator decides, and the global state is left as it was.
    """
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.cat([policy(images[a : a + chunk]) for a in range(0, len(images), chunk)])


def random_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
    attempts: int = 10,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(boxes (x1, y1, x2, y2) [n, 4], found [n])`: a box of area fraction in `scale` and aspect
    in `ratio` per image, the first of `attempts` tries that fits; `found` is False where none did.
    """
    area = height * width
    target = torch.empty(n, attempts).uniform_(scale[0], scale[1], generator=generator) * area
    log_r = torch.empty(n, attempts).uniform_(
        math.log(ratio[0]), math.log(ratio[1]), generator=generator
    )
    aspect = torch.exp(log_r)
    w = torch.sqrt(target * aspect).round()
    h = torch.sqrt(target / aspect).round()
    ok = (w >= 1) & (w <= width) & (h >= 1) & (h <= height)
    first = ok.to(torch.uint8).argmax(dim=1, keepdim=True)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    found = ok.any(dim=1)
    u = torch.rand(n, 2, generator=generator)
    top = (u[:, 0] * (height - h + 1)).floor().clamp(min=0)
    left = (u[:, 1] * (width - w + 1)).floor().clamp(min=0)
    return torch.stack([left, top, left + w, top + h], dim=1), found


def shift_pixels(side: int, shift: float) -> int:
    """The largest translation in pixels for images of `side` pixels."""
    return max(1, round(side * shift)) if shift > 0 else 0


def random_shift(
    images: torch.Tensor, pixels: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """`[B, C, H, W]` (any dtype) -> each image moved by its own (dy, dx) in [-pixels, pixels],
    the uncovered border zero: one gather for the whole batch (pad, then index the windows)."""
    if pixels <= 0:
        return images
    b, _, h, w = images.shape
    offsets = torch.randint(0, 2 * pixels + 1, (2, b), generator=generator).to(images.device)
    padded = torch.nn.functional.pad(images, (pixels, pixels, pixels, pixels))
    rows = offsets[0, :, None] + torch.arange(h, device=images.device)  # [B, H]
    cols = offsets[1, :, None] + torch.arange(w, device=images.device)  # [B, W]
    batch = torch.arange(b, device=images.device)[:, None, None]
    moved = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return moved.permute(0, 3, 1, 2).contiguous()


def random_erase(
    images: torch.Tensor, p: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Float `[B, C, H, W]` in [0, 1]: with probability `p` per image, one random box is replaced by
    uniform noise (random erasing, Zhong et al. 2017). Vectorised: one mask for the batch."""
    n, c, h, w = images.shape
    hit = torch.rand(n, generator=generator) < p
    boxes, found = random_boxes(n, h, w, ERASING_SCALE, ERASING_RATIO, generator)
    which = torch.nonzero(hit & found).squeeze(1)
    if len(which) == 0:
        return images
    x1, y1, x2, y2 = boxes[which].unbind(1)
    ys, xs = torch.arange(h), torch.arange(w)
    rows = (ys[None] >= y1[:, None]) & (ys[None] < y2[:, None])  # [k, H]
    cols = (xs[None] >= x1[:, None]) & (xs[None] < x2[:, None])  # [k, W]
    mask = (rows[:, :, None] & cols[:, None, :])[:, None].to(images.device)  # [k, 1, H, W]
    noise = torch.rand(len(which), c, h, w, generator=generator).to(images.device, images.dtype)
    out = images.clone()
    index = which.to(images.device)
    out[index] = torch.where(mask, noise, images[index])
    return out


# --- mixup and cutmix: batches with probability targets -----------------------------------------


class BatchMixer:
    """`(images [B, C, H, W], labels [B]) -> (mixed images, targets [B, K] float summing to 1)`.

    Each batch is mixed with itself rolled by one (the batch is already shuffled), with one
    lambda per batch drawn from Beta(alpha, alpha); with both mixup and cutmix on, each batch
    uses one of them with even odds (timm's and torchvision's recipes). Cutmix's lambda is the
    pasted box's true area share, after clipping at the border.
    """

    def __init__(
        self, num_classes: int, mixup: float, cutmix: float, generator: torch.Generator | None
    ):
        if mixup <= 0 and cutmix <= 0:
            raise ValueError("BatchMixer needs mixup or cutmix above 0")
        self.num_classes, self.mixup, self.cutmix = int(num_classes), float(mixup), float(cutmix)
        self.reseed(generator)

    def reseed(self, generator: torch.Generator | None) -> None:
        """Draw the mixing sequence's seed from `generator` (numpy: Beta draws take a seed)."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        self.rng = np.random.default_rng(seed)

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        onehot = torch.nn.functional.one_hot(labels.long(), self.num_classes).float()
        if len(images) < 2:
            return images, onehot
        use_cutmix = self.cutmix > 0 and (self.mixup <= 0 or self.rng.random() < 0.5)
        alpha = self.cutmix if use_cutmix else self.mixup
        lam = float(self.rng.beta(alpha, alpha))
        other = images.roll(1, dims=0)
        if use_cutmix:
            h, w = images.shape[-2:]
            cut = math.sqrt(1.0 - lam)
            ch, cw = int(h * cut), int(w * cut)
            cy, cx = int(self.rng.integers(h)), int(self.rng.integers(w))
            y1, y2 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
            x1, x2 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
            mixed = images.clone()
            mixed[..., y1:y2, x1:x2] = other[..., y1:y2, x1:x2]
            lam = 1.0 - (y2 - y1) * (x2 - x1) / (h * w)
        else:
            mixed = images * lam + other * (1.0 - lam)
        targets = onehot * lam + onehot.roll(1, dims=0) * (1.0 - lam)
        return mixed, targets


class MixedLoader:
    """A training loader whose batches are mixed: `(images, targets [B, K], indices...)`.

    Looks like the loader it wraps otherwise (`len()`, `.dataset`, `.sampler`, `.generator`...:
    the trainer counts skipped images and orders epochs by them); a None batch passes through.
    Each epoch's mixing is seeded from the wrapped loader's generator when it has one, so an
    epoch whose generator is reseeded (a resumed run) mixes the same way again.
    """

    def __init__(self, loader: Iterable, mixer: BatchMixer):
        self.loader, self.mixer = loader, mixer

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        if name in ("loader", "mixer"):  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __iter__(self) -> Iterator[Any]:
        generator = getattr(self.loader, "generator", None)
        if isinstance(generator, torch.Generator):
            self.mixer.reseed(generator)
        for batch in self.loader:
            if batch is None:
                yield None
                continue
            images, targets = self.mixer(batch[0], batch[1])
            yield (images, targets, *batch[2:])


# --- the PIL path: one image at a time ----------------------------------------------------------


class ScaledRandomResizedCrop:
    """RandomResizedCrop to `size` whose area range is `crop_scale` of this image's resolution."""

    def __init__(self, size: int, interpolation: InterpolationMode):
        self.size, self.interpolation = int(size), interpolation

    def __call__(self, image: Image.Image) -> Image.Image:
        scale = crop_scale(min(*image.size, self.size))
        top, left, h, w = v2.RandomResizedCrop.get_params(image, list(scale), list(RATIO))
        return TF.resized_crop(
            image,
            top,
            left,
            h,
            w,
            [self.size, self.size],
            interpolation=self.interpolation,
            antialias=True,
        )


class RandomErase:
    """`random_erase` for one float `[C, H, W]` image (the PIL path's workers use torch's RNG)."""

    def __init__(self, p: float):
        self.p = p

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return random_erase(image[None], self.p)[0]
