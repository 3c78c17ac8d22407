"""Drawing detections on images: translucent masks, box outlines, "name score" labels.

numpy + PIL only (no JAX, no TensorFlow), so it works in any notebook.

Shape shorthand: H x W the image size, N detections, K keypoints. Boxes
(and keypoints (x, y, v)) are ``xyxy`` in
pixels of the image being drawn on (original-image pixels for final
detections). Labels are contiguous class indices into ``class_names``, whose
entry 0 is "background".

Colours are deterministic: detection ``i`` (its index in the inputs, before
thresholding) always gets hue ``frac(i * golden_ratio)``, so neighbouring
instances get well-separated colours and the same call gives the same picture.
"""

from __future__ import annotations

import colorsys
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mrcnn_jax.coco_eval import check_detections

__all__ = ["draw_boxes", "draw_detections", "heatmap", "image_grid", "instance_color",
           "save_png", "upscale"]

_GOLDEN_RATIO_CONJUGATE = 0.6180339887498949


def instance_color(index: int) -> tuple[int, int, int]:
    """Deterministic, well-spread RGB colour (uint8 components) for instance ``index``."""
    hue = (index * _GOLDEN_RATIO_CONJUGATE) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def _check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(
            f"{name} must be uint8, got {image.dtype}; convert first, e.g. "
            "np.clip(x * 255, 0, 255).round().astype(np.uint8) for floats in [0, 1]"
        )
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name} must have shape [H, W, 3] (RGB), got {image.shape}")
    return image


def draw_detections(
    image: np.ndarray,
    boxes_xyxy: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    masks: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    score_threshold: float = 0.5,
    alpha: float = 0.5,
    font_size: int | None = None,
    keypoints: np.ndarray | None = None,
    skeleton: Sequence[Sequence[int]] = (),
) -> np.ndarray:
    """Returns a copy of ``image`` with the detections scoring >= ``score_threshold`` drawn.

    Each kept detection gets its mask blended in at ``alpha`` (0.5), its box
    outlined, and a ``"name 0.97"`` label on a filled background in the
    instance's colour above the box (inside it when the box touches the top
    edge). Lower scores are drawn first so the best detection ends on top.
    Pixels away from every kept detection and its label are left unchanged.

    Args:
      image: ``[H, W, 3]`` uint8 RGB. Not modified.
      boxes_xyxy: ``[N, 4]`` boxes, ``xyxy`` in pixels of ``image``.
      scores: ``[N]`` confidences.
      labels: ``[N]`` integer class indices into ``class_names``.
      masks: ``[N, H, W]`` masks at the image size (bool or integer, nonzero
        = foreground; floats are thresholded at 0.5), or None.
      class_names: names indexed by label, ``class_names[0] == "background"``;
        None writes the label number.
      score_threshold: detections with ``score < score_threshold`` are skipped.
      alpha: mask opacity in [0, 1].
      font_size: None uses ``ImageFont.load_default()``; an int asks for that
        size of the default font.
      keypoints: ``[N, K, 3]`` (x, y, v) in pixels of ``image``, or None:
        each kept detection's keypoints with v > 0 are drawn as dots, joined
        by the limbs of ``skeleton`` (pairs of 1-based keypoint indices, as
        in COCO's categories), in the instance's colour.

    Returns:
      ``[H, W, 3]`` uint8 image.

    Raises:
      ValueError: on wrong dtypes/shapes or a label outside ``class_names``.
    """
    image = _check_image(image)
    h, w = image.shape[:2]
    boxes, scores, labels = check_detections(boxes_xyxy, scores, labels)
    n = boxes.shape[0]
    if masks is not None:
        masks = np.asarray(masks)
        if masks.shape != (n, h, w):
            raise ValueError(
                f"masks must have shape [N, H, W] = {(n, h, w)} (full-size, matching the "
                f"image), got {masks.shape}"
            )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if keypoints is not None:
        keypoints = np.asarray(keypoints, np.float64)
        if keypoints.ndim != 3 or keypoints.shape[0] != n or keypoints.shape[2] != 3:
            raise ValueError(f"keypoints must have shape [N, K, 3] = [{n}, K, 3], got "
                             f"{keypoints.shape}")
        bad = [p for p in skeleton
               if len(p) != 2 or not all(1 <= int(j) <= keypoints.shape[1] for j in p)]
        if bad:
            raise ValueError(f"skeleton pairs {bad[:5]} are not 1-based indices of the "
                             f"{keypoints.shape[1]} keypoints")
    if class_names is not None:
        bad = [int(l) for l in labels if not 0 <= l < len(class_names)]
        if bad:
            raise ValueError(
                f"labels {sorted(set(bad))} are outside class_names (len {len(class_names)}); "
                "labels must be contiguous indices with 0 = background"
            )

    keep = np.nonzero(scores >= score_threshold)[0]
    keep = keep[np.argsort(scores[keep], kind="stable")]  # ascending: best drawn last
    out = image.copy()
    if keep.size == 0:
        return out

    # Masks: alpha-blend in float, once per instance, in draw order.
    if masks is not None:
        canvas = out.astype(np.float32)
        for i in keep:
            m = masks[i] >= 0.5 if np.issubdtype(masks[i].dtype, np.floating) else masks[i] != 0
            color = np.asarray(instance_color(int(i)), dtype=np.float32)
            canvas[m] = (1.0 - alpha) * canvas[m] + alpha * color
        out = np.clip(np.round(canvas), 0, 255).astype(np.uint8)

    # Boxes and labels with PIL.
    pil = Image.fromarray(out)
    draw = ImageDraw.Draw(pil)
    font = ImageFont.load_default() if font_size is None else ImageFont.load_default(size=font_size)
    line_width = max(1, int(round(max(h, w) / 400)))
    for i in keep:
        if not np.all(np.isfinite(boxes[i])):
            continue
        color = instance_color(int(i))
        x1, y1, x2, y2 = boxes[i]
        # Pixel-index rectangle covering [x1, x2) x [y1, y2), clipped to the image.
        px1 = int(np.clip(np.floor(x1), 0, w - 1))
        py1 = int(np.clip(np.floor(y1), 0, h - 1))
        px2 = int(np.clip(np.ceil(x2) - 1, 0, w - 1))
        py2 = int(np.clip(np.ceil(y2) - 1, 0, h - 1))
        px2, py2 = max(px2, px1), max(py2, py1)
        draw.rectangle([px1, py1, px2, py2], outline=color, width=line_width)
        if keypoints is not None:
            _draw_keypoints(draw, keypoints[i], skeleton, color, line_width)

        label = int(labels[i])
        name = class_names[label] if class_names is not None else str(label)
        text = f"{name} {scores[i]:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        pad = 1
        box_h = th + 2 * pad
        ty = py1 - box_h if py1 - box_h >= 0 else py1  # above the box, else inside it
        tx = min(px1, max(0, w - (tw + 2 * pad)))
        draw.rectangle([tx, ty, tx + tw + 2 * pad - 1, ty + box_h - 1], fill=color)
        luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
        text_color = (0, 0, 0) if luminance > 150 else (255, 255, 255)
        draw.text((tx + pad - left, ty + pad - top), text, fill=text_color, font=font)
    return np.asarray(pil, dtype=np.uint8).copy()


def _draw_keypoints(draw, kps, skeleton, color, line_width: int) -> None:
    """One instance's skeleton (limbs between labelled keypoints) and dots."""
    shown = kps[:, 2] > 0
    for a, b in skeleton:
        a, b = int(a) - 1, int(b) - 1
        if shown[a] and shown[b]:
            draw.line([tuple(kps[a, :2]), tuple(kps[b, :2])], fill=color, width=line_width + 1)
    r = line_width + 1
    for x, y, _ in kps[shown]:
        draw.ellipse([x - r, y - r, x + r, y + r], fill=color, outline=(255, 255, 255))


def save_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Saves a ``[H, W, 3]`` uint8 RGB image as PNG, creating parent directories."""
    image = _check_image(image)
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG")


# ----------------------------------------------------------------------------
# Inspection pictures (notebooks): plain boxes, heat maps, grids
# ----------------------------------------------------------------------------

def draw_boxes(image: np.ndarray, boxes_xyxy: np.ndarray,
               colors: Sequence[tuple[int, int, int]] | tuple[int, int, int] | None = None,
               width: int = 1) -> np.ndarray:
    """A copy of ``image`` with box outlines (anchors, proposals, RoIs, ground truth).

    Args:
        image: ``[H, W, 3]`` uint8 RGB. Not modified.
        boxes_xyxy: ``[N, 4]`` ``xyxy`` in pixels of ``image``; non-finite rows are skipped,
            boxes beyond the image are clipped to it.
        colors: one RGB colour for all boxes, one per box, or None
            (``instance_color(i)`` for box ``i``).
        width: outline width in pixels.
    """
    image = _check_image(image)
    boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    n = boxes.shape[0]
    if colors is None:
        colors = [instance_color(i) for i in range(n)]
    elif len(colors) == 3 and np.isscalar(colors[0]):
        colors = [tuple(int(c) for c in colors)] * n
    if len(colors) != n:
        raise ValueError(f"colors: expected one colour or {n} (one per box), got {len(colors)}")
    h, w = image.shape[:2]
    pil = Image.fromarray(image.copy())
    draw = ImageDraw.Draw(pil)
    for box, color in zip(boxes, colors):
        if not np.all(np.isfinite(box)):
            continue
        x1, y1, x2, y2 = box
        px1, py1 = int(np.clip(np.floor(x1), 0, w - 1)), int(np.clip(np.floor(y1), 0, h - 1))
        px2 = max(int(np.clip(np.ceil(x2) - 1, 0, w - 1)), px1)
        py2 = max(int(np.clip(np.ceil(y2) - 1, 0, h - 1)), py1)
        draw.rectangle([px1, py1, px2, py2], outline=tuple(int(c) for c in color), width=width)
    return np.asarray(pil, dtype=np.uint8).copy()


# Viridis at 9 evenly spaced points (matplotlib's ``viridis(np.linspace(0, 1, 9))``
# times 255, rounded); linear interpolation between them is within a few levels of the
# full 256-entry map, and keeps matplotlib optional.
_VIRIDIS = np.array([
    [68, 1, 84], [71, 45, 123], [59, 82, 139], [44, 114, 142], [33, 145, 140],
    [40, 174, 128], [94, 201, 98], [173, 220, 48], [253, 231, 37]], np.float64)


def heatmap(values: np.ndarray, vmin: float | None = None, vmax: float | None = None
            ) -> np.ndarray:
    """``[H, W]`` values -> ``[H, W, 3]`` uint8 RGB in the viridis colour map.

    ``vmin`` / ``vmax`` default to the finite minimum / maximum of ``values``;
    values are clipped to them; non-finite values and a constant map draw as the
    lowest colour.
    """
    values = np.asarray(values, np.float64)
    if values.ndim != 2:
        raise ValueError(f"heatmap: values must be [H, W], got shape {values.shape}")
    finite = np.isfinite(values)
    lo = vmin if vmin is not None else (values[finite].min() if finite.any() else 0.0)
    hi = vmax if vmax is not None else (values[finite].max() if finite.any() else 1.0)
    t = np.where(finite, (values - lo) / (hi - lo) if hi > lo else 0.0, 0.0)
    t = np.clip(t, 0.0, 1.0) * (len(_VIRIDIS) - 1)
    i0 = np.minimum(np.floor(t).astype(int), len(_VIRIDIS) - 2)
    frac = (t - i0)[..., None]
    rgb = (1 - frac) * _VIRIDIS[i0] + frac * _VIRIDIS[i0 + 1]
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement by an integer ``factor`` (``[H, W, ...]``),
    so small maps (feature grids, 7 x 7 or 28 x 28 crops) show their pixels."""
    if int(factor) < 1:
        raise ValueError(f"upscale: factor must be an int >= 1, got {factor}")
    image = np.asarray(image)
    return np.repeat(np.repeat(image, int(factor), axis=0), int(factor), axis=1)


def image_grid(images: Sequence[np.ndarray], cols: int, pad: int = 2,
               background: int = 255) -> np.ndarray:
    """Tiles ``[h_i, w_i, 3]`` uint8 images row by row, ``cols`` per row, each
    in a cell of the largest height and width (top-left), ``pad`` pixels apart.
    Returns one ``[H, W, 3]`` uint8 image."""
    if not len(images):
        raise ValueError("image_grid: no images")
    images = [_check_image(im, f"images[{i}]") for i, im in enumerate(images)]
    cols = max(1, min(int(cols), len(images)))
    rows = -(-len(images) // cols)
    ch = max(im.shape[0] for im in images)
    cw = max(im.shape[1] for im in images)
    out = np.full((rows * ch + (rows - 1) * pad, cols * cw + (cols - 1) * pad, 3),
                  background, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        y, x = r * (ch + pad), c * (cw + pad)
        out[y:y + im.shape[0], x:x + im.shape[1]] = im
    return out
