"""Tests for mrcnn_jax.visualize: draw_detections and save_png."""

import numpy as np
import pytest
from PIL import Image

from mrcnn_jax import visualize

H, W = 120, 160
CLASS_NAMES = ["background", "person", "car"]


def _scene():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    boxes = np.array([[40.0, 40.0, 80.0, 90.0], [100.0, 30.0, 140.0, 60.0]])
    masks = np.zeros((2, H, W), bool)
    masks[0, 50:80, 45:75] = True
    masks[1, 35:55, 105:135] = True
    scores = np.array([0.9, 0.3])
    labels = np.array([1, 2])
    return image, boxes, scores, labels, masks


def test_draw_detections_masks_boxes_and_untouched_background():
    image, boxes, scores, labels, masks = _scene()
    before = image.copy()
    out = visualize.draw_detections(image, boxes, scores, labels, masks, CLASS_NAMES, score_threshold=0.0)
    assert out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(image, before)  # input not modified

    for m in masks:
        inside = m.copy()
        assert np.mean(np.any(out[inside] != image[inside], axis=-1)) > 0.95
    # Mask pixels are a ~50% blend of image and a colour.
    color = np.array(visualize.instance_color(0), np.float64)
    expected = 0.5 * image[65, 60].astype(np.float64) + 0.5 * color
    np.testing.assert_allclose(out[65, 60], expected, atol=1.0)
    # Box outline in the instance's colour (left edge, below the label, off the mask).
    np.testing.assert_array_equal(out[88, 40], visualize.instance_color(0))
    # Far from every detection and label: unchanged.
    for y, x in [(0, 0), (H - 1, W - 1), (110, 10), (5, 150), (100, 100)]:
        np.testing.assert_array_equal(out[y, x], image[y, x])
    # The label sits above the first box.
    assert np.any(out[28:40, 40:70] != image[28:40, 40:70])


def test_score_threshold_filters():
    image, boxes, scores, labels, masks = _scene()
    out = visualize.draw_detections(image, boxes, scores, labels, masks, CLASS_NAMES, score_threshold=0.5)
    kept, dropped = masks[0], masks[1]
    assert np.all(np.any(out[kept] != image[kept], axis=-1))
    # Nothing drawn around the dropped detection: its box, mask and label area are untouched.
    np.testing.assert_array_equal(out[15:61, 100:141], image[15:61, 100:141])
    assert dropped.any()

    nothing = visualize.draw_detections(image, boxes, scores, labels, masks, CLASS_NAMES, score_threshold=0.95)
    np.testing.assert_array_equal(nothing, image)


def test_boxes_only_edge_boxes_and_deterministic():
    image = np.full((H, W, 3), 30, np.uint8)
    boxes = np.array([[0.0, 0.0, 50.0, 30.0], [120.0, 90.0, 400.0, 300.0]])  # touches top, overflows
    args = (image, boxes, np.array([0.8, 0.7]), np.array([2, 1]), None, CLASS_NAMES)
    out = visualize.draw_detections(*args)
    np.testing.assert_array_equal(out, visualize.draw_detections(*args))
    np.testing.assert_array_equal(out[20, 1], image[20, 1])  # no mask: box interior untouched
    assert np.any(out[0:12, 0:40] != 30)  # label drawn inside the box at the top edge
    np.testing.assert_array_equal(out[H - 1, 130], visualize.instance_color(1))  # clipped bottom edge
    assert visualize.instance_color(0) != visualize.instance_color(1)


def test_draw_detections_validates():
    image, boxes, scores, labels, masks = _scene()
    with pytest.raises(ValueError, match="uint8"):
        visualize.draw_detections(image.astype(np.float32), boxes, scores, labels, masks, CLASS_NAMES)
    with pytest.raises(ValueError, match="masks"):
        visualize.draw_detections(image, boxes, scores, labels, masks[:, :10], CLASS_NAMES)
    with pytest.raises(ValueError, match="class_names"):
        visualize.draw_detections(image, boxes, scores, np.array([1, 3]), masks, CLASS_NAMES)
    with pytest.raises(ValueError, match="scores"):
        visualize.draw_detections(image, boxes, scores[:1], labels, masks, CLASS_NAMES)


def test_save_png_round_trip(tmp_path):
    image, *_ = _scene()
    path = tmp_path / "viz" / "det.png"
    visualize.save_png(path, image)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), image)


def test_draw_boxes_outlines_only():
  image = np.full((40, 50, 3), 10, np.uint8)
  out = visualize.draw_boxes(image, np.array([[5.0, 5.0, 20.0, 30.0], [np.nan, 0, 1, 1]]),
                             colors=(200, 0, 0), width=1)
  np.testing.assert_array_equal(out[5, 10], [200, 0, 0])   # top edge
  np.testing.assert_array_equal(out[29, 19], [200, 0, 0])  # bottom-right corner
  np.testing.assert_array_equal(out[15, 12], image[15, 12])  # inside untouched
  np.testing.assert_array_equal(out[35, 40], image[35, 40])
  np.testing.assert_array_equal(image, np.full((40, 50, 3), 10, np.uint8))  # not modified
  per_box = visualize.draw_boxes(image, np.array([[0.0, 0.0, 10.0, 10.0]]))
  np.testing.assert_array_equal(per_box[0, 5], visualize.instance_color(0))
  with pytest.raises(ValueError, match="colors"):
    visualize.draw_boxes(image, np.zeros((2, 4)), colors=[(1, 2, 3)])


def test_heatmap_upscale_and_grid():
  values = np.array([[0.0, 0.5], [1.0, np.nan]])
  rgb = visualize.heatmap(values)
  assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
  np.testing.assert_array_equal(rgb[0, 0], [68, 1, 84])      # viridis low end
  np.testing.assert_array_equal(rgb[1, 0], [253, 231, 37])   # high end
  np.testing.assert_array_equal(rgb[1, 1], rgb[0, 0])        # NaN drawn as the low end
  np.testing.assert_array_equal(rgb[0, 1], [33, 145, 140])   # the middle
  clipped = visualize.heatmap(np.array([[-1.0, 2.0]]), vmin=0.0, vmax=1.0)
  np.testing.assert_array_equal(clipped[0], [[68, 1, 84], [253, 231, 37]])
  big = visualize.upscale(rgb, 3)
  assert big.shape == (6, 6, 3)
  np.testing.assert_array_equal(big[3:6, 0:3], np.broadcast_to(rgb[1, 0], (3, 3, 3)))
  grid = visualize.image_grid([np.zeros((4, 5, 3), np.uint8), np.ones((2, 3, 3), np.uint8) * 7,
                               np.zeros((4, 5, 3), np.uint8)], cols=2, pad=1)
  assert grid.shape == (4 + 1 + 4, 5 + 1 + 5, 3)
  np.testing.assert_array_equal(grid[0:2, 6:9], 7)
  assert (grid[0:2, 9:11] == 255).all() and (grid[4] == 255).all()
  with pytest.raises(ValueError, match="values"):
    visualize.heatmap(np.zeros(3))
