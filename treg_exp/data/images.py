"""Image loading and the shared preprocessing: any Pillow mode → RGB, centre square, resize, map to [−1, 1].

Every mode Pillow reads is converted with its own scale (:func:`rgb_levels`), then the largest centred square is
resized to the resolution (PIL bicubic, antialiased) and mapped to [−1, 1]:

========================  =========================================================================================
mode                      conversion to RGB in [0, 1]
========================  =========================================================================================
``1``                     0 / 1 on every channel
``L``                     ``v / 255`` on every channel
``P``                     the palette colour ``/ 255``
``RGB``, ``RGBX``         ``/ 255`` (the padding byte of ``RGBX`` is dropped)
``LA``, ``PA``, ``RGBA``  as ``L``, ``P``, ``RGB``: the alpha channel is dropped (colours as stored), with a warning
``La``, ``RGBa``          premultiplied alpha: colours divided by alpha first (Pillow's ``RGBa → RGBA``), then dropped
``CMYK``                  ``(1 − C)(1 − K)``, ``(1 − M)(1 − K)``, ``(1 − Y)(1 − K)`` (the naive transform, as Pillow;
                          no ICC colour management)
``YCbCr``                 JPEG's full-range BT.601 inverse, clipped
``LAB``                   CIE L*a*b* (Pillow's layout: ``L·100/255``, ``a − 128``, ``b − 128``), D65 white, → sRGB,
                          clipped (as :func:`skimage.color.lab2rgb`; Pillow's own ``LAB → RGB`` is not this)
``HSV``                   the HSV → RGB hexcone, as :func:`colorsys.hsv_to_rgb`
``I;16*``                 ``v / 65535`` on every channel (16-bit grey PNG, TIFF, PGM)
``I``                     32-bit integers: ``v / 65535``, the 16-bit range (older Pillows read 16-bit grey PNGs as
                          ``I``); values outside 0..65535 have no defined scale and fail the image
``F``                     32-bit floats: taken as [0, 1] (the float-image convention of scikit-image, tifffile);
                          values outside [0, 1] or non-finite fail the image
========================  =========================================================================================

8-bit modes are resized as 8-bit RGB images (bit-identical to ``image.convert("RGB")`` for ``L``, ``RGB``, ``P``...);
16-bit and float images are resized in float (mode ``F`` per channel), so their extra precision is kept.
An image smaller than the resolution is upsampled, with a warning naming it.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

ALPHA_MODES = {"LA": "L", "PA": "P", "RGBA": "RGB", "La": "L", "RGBa": "RGB"}
SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
#: modes Pillow converts to RGB itself with the formulas in the module docstring
PILLOW_RGB_MODES = {"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "HSV"}
#: CIE XYZ of the D65 white and the XYZ → linear sRGB matrix (IEC 61966-2-1)
D65_WHITE = (0.95047, 1.0, 1.08883)
XYZ_TO_SRGB = (
    (3.2404542, -1.5371385, -0.4985314),
    (-0.9692660, 1.8760108, 0.0415560),
    (0.0556434, -0.2040259, 1.0572252),
)


class ImageReadError(Exception):
    """An image file that cannot be read or has no defined pixel scale (recorded as that image's failure)."""


def center_square(image: Image.Image) -> Image.Image:
    """The largest centred square of ``image``."""
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side))


def _drop_alpha(image: Image.Image, name: str) -> Image.Image:
    log.warning("%s has an alpha channel (mode %s): it is dropped, colours are kept as stored", name, image.mode)
    if image.mode == "RGBa":
        return image.convert("RGBA").convert("RGB")
    if image.mode == "La":  # Pillow has no La → LA conversion: undo the premultiplication here
        array = np.asarray(image, dtype=np.float64)
        alpha = array[..., 1]
        grey = np.where(alpha > 0, array[..., 0] * 255.0 / np.maximum(alpha, 1), 0.0)
        return Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8), "L")
    if image.mode == "PA":
        return image.convert("RGBA").convert("RGB")  # palette lookup, then the alpha is dropped
    return image.getchannel(0) if image.mode == "LA" else image.convert("RGB")


def rgb_levels(image: Image.Image, name: str = "image") -> Image.Image | np.ndarray:
    """``image`` as 8-bit RGB (a PIL image) or, for 16-bit and float modes, a float32 ``[H, W, 3]`` array in [0, 1].

    Raises :class:`ImageReadError` for a mode without a defined scale (see the module docstring).
    """
    mode = image.mode
    if mode not in ALPHA_MODES and "transparency" in image.info:  # a palette or colour key marks transparency
        log.warning("%s has transparency (mode %s): it is dropped, colours are kept as stored", name, mode)
    if mode in ALPHA_MODES:
        image = _drop_alpha(image, name)
        mode = image.mode
    if mode in PILLOW_RGB_MODES:
        return image.convert("RGB")
    if mode == "LAB":
        return lab_to_rgb(np.asarray(image))
    if mode in SIXTEEN_BIT_MODES:
        grey = np.asarray(image).astype(np.float32) / 65535.0
    elif mode == "I":
        values = np.asarray(image)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > 65535:
            raise ImageReadError(
                f"{name}: 32-bit integer image with values in [{low}, {high}] has no defined scale "
                "(0..65535 is read as 16-bit); convert it to 8- or 16-bit"
            )
        grey = values.astype(np.float32) / 65535.0
    elif mode == "F":
        grey = np.asarray(image, dtype=np.float32)
        if not np.isfinite(grey).all():
            raise ImageReadError(f"{name}: float image with non-finite pixels")
        low, high = float(grey.min()), float(grey.max())
        if low < 0.0 or high > 1.0:
            raise ImageReadError(
                f"{name}: float image with values in [{low:g}, {high:g}]; float images are read as [0, 1]"
            )
    else:
        try:
            return image.convert("RGB")
        except (ValueError, OSError) as error:
            raise ImageReadError(f"{name}: image mode {mode} cannot be converted to RGB ({error})") from error
    return np.repeat(grey[..., None], 3, axis=2)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """Pillow-layout ``LAB`` bytes ``[H, W, 3]`` → sRGB float32 ``[H, W, 3]`` in [0, 1] (D65 white, clipped)."""
    lightness = lab[..., 0].astype(np.float64) * (100.0 / 255.0)
    a_star, b_star = lab[..., 1].astype(np.float64) - 128.0, lab[..., 2].astype(np.float64) - 128.0
    fy = (lightness + 16.0) / 116.0  # f(Y/Yn); f(Z/Zn) is clipped at 0 for out-of-gamut colours, as scikit-image
    delta = 6.0 / 29.0

    def f_inverse(t: np.ndarray) -> np.ndarray:
        return np.where(t > delta, t**3, 3.0 * delta**2 * (t - 4.0 / 29.0))

    xyz = np.stack(
        [
            D65_WHITE[0] * f_inverse(fy + a_star / 500.0),
            f_inverse(fy),
            D65_WHITE[2] * f_inverse(np.maximum(fy - b_star / 200.0, 0.0)),
        ],
        axis=-1,
    )
    linear = np.clip(xyz @ np.asarray(XYZ_TO_SRGB).T, 0.0, 1.0)
    srgb = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1.0 / 2.4) - 0.055)
    return np.clip(srgb, 0.0, 1.0).astype(np.float32)


def _warn_if_small(size: tuple[int, int], resolution: int, name: str) -> None:
    if min(size) < resolution:
        log.warning(
            "%s is %d×%d px, smaller than the resolution %d: its centre square is upsampled (bicubic)",
            name,
            *size,
            resolution,
        )


def to_tensor(image: Image.Image, resolution: int, name: str = "image") -> torch.Tensor:
    """Any-mode ``image`` → RGB → centre square → ``resolution``² (PIL bicubic, antialiased) → ``[3, R, R]`` in [−1, 1].

    ``name`` (the file) is used in warnings (alpha dropped, upsampled) and errors.
    """
    levels = rgb_levels(image, name)
    if isinstance(levels, Image.Image):
        _warn_if_small(levels.size, resolution, name)
        square = center_square(levels)
        if square.size != (resolution, resolution):
            square = square.resize((resolution, resolution), Image.BICUBIC)
        array = np.asarray(square, dtype=np.float32) / 127.5 - 1.0
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()
    height, width = levels.shape[:2]
    _warn_if_small((width, height), resolution, name)
    channels = []
    for c in range(3):  # PIL resizes float images one channel at a time (mode F)
        square = center_square(Image.fromarray(np.ascontiguousarray(levels[..., c]), mode="F"))
        if square.size != (resolution, resolution):
            square = square.resize((resolution, resolution), Image.BICUBIC)
        channels.append(np.clip(np.asarray(square, dtype=np.float32), 0.0, 1.0))
    return torch.from_numpy(np.stack(channels) * 2.0 - 1.0).contiguous()


def load_image(path: str, resolution: int) -> torch.Tensor:
    """The image file ``path`` as ``[3, R, R]`` in [−1, 1]; any reading or decoding problem is an
    :class:`ImageReadError` naming the file (unreadable, truncated, not an image, no defined scale)."""
    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated file fails here, inside the image's own isolation
            return to_tensor(image, resolution, str(path))
    except ImageReadError:
        raise
    except Exception as error:  # noqa: BLE001 - decoders raise OSError, SyntaxError, ValueError, struct.error ...
        raise ImageReadError(f"cannot read {path}: {type(error).__name__}: {error}") from error


def to_pil(x: torch.Tensor) -> Image.Image:
    """``[3, H, W]`` in [−1, 1] → 8-bit RGB (clamped, rounded)."""
    levels = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(levels.permute(1, 2, 0).cpu().numpy())


def from_uint8(array: np.ndarray) -> torch.Tensor:
    """``[H, W, 3]`` uint8 → ``[3, H, W]`` in [−1, 1]."""
    return torch.from_numpy(np.asarray(array, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1).contiguous()
