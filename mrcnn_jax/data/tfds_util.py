"""Small pieces shared by the TFDS builders (shapes, coco)."""

from __future__ import annotations

import sys

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath

from mrcnn_jax.data.synthetic import png_bytes  # noqa: F401  (shared by the builders)


def with_bboxes(example: dict) -> dict:
  """``synthetic.encode_example``'s output with each object's box tuple as the
  ``tfds.features.BBox`` that ``BBoxFeature`` encodes (in place)."""
  for obj in example["objects"]:
    obj["bbox"] = tfds.features.BBox(*obj["bbox"])
  return example


class SourceFileCodePath:
  """Mixin for a builder defined outside the tfds package: TFDS 4.9.x finds a
  builder's source through `importlib_resources`, which is not always
  installed (ModuleNotFoundError in download_and_prepare); name the builder's
  module file directly instead. List it before GeneratorBasedBuilder."""

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(sys.modules[cls.__module__].__file__)


class KeepEncoded(tfds.decode.Decoder):
  """Keeps a feature's stored bytes, also inside a ``Sequence``, where
  ``tfds.decode.SkipDecoding`` maps an identity over the elements with
  arguments TF and TFDS have deprecated (warnings in the log)."""

  def decode_example(self, serialized_example):
    return serialized_example

  def decode_batch_example(self, serialized_example):
    return serialized_example

  def decode_ragged_example(self, serialized_example):
    return serialized_example


class DecodeSequenceImages(tfds.decode.Decoder):
  """Decodes the images of a ``Sequence`` as TFDS does, with ``tf.map_fn``'s
  current arguments (TFDS passes deprecated ones, logging warnings)."""

  def decode_example(self, serialized_example):
    return self.feature.decode_example(serialized_example)

  def decode_batch_example(self, serialized_example):
    feature = self.feature
    dtype = feature.tf_dtype

    def decode():
      return tf.map_fn(feature.decode_example, serialized_example,
                       fn_output_signature=tf.TensorSpec(feature.shape, dtype),
                       parallel_iterations=10)

    # map_fn cannot infer the unknown image size of an empty sequence.
    empty = lambda: tf.zeros([0] + [d or 0 for d in feature.shape], dtype)
    return tf.cond(tf.size(serialized_example) > 0, decode, empty)


def image_decoders(decode: bool) -> dict:
  """``as_dataset`` decoders of ``image`` and ``objects/mask``: kept as
  encoded bytes (`decode` False) or decoded (True)."""
  if decode:
    return {"objects": {"mask": DecodeSequenceImages()}}
  return {"image": KeepEncoded(), "objects": {"mask": KeepEncoded()}}
