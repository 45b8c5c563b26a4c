"""The embedded metadata has one schema and one reader (TensorFlow-free); artifacts written
before the schema was shared still read; `tflite_ops` / `onnx_ops` count ops of either kind."""

import json

import pytest

from edgetrunc.runtime.metadata import (KEYS, artifact_metadata, from_onnx_props, onnx_props,
                                        read_metadata, read_onnx_metadata, tflite_metadata_bytes)


def _payload(fmt):
    return artifact_metadata("9.9", "m.keras", "ab" * 32,
                             [{"layer": "tlu", "lower": -2.0, "upper": 2.0}], fmt, "int8")


def test_both_formats_encode_the_same_keys():
    assert sorted(json.loads(tflite_metadata_bytes(_payload("tflite")))) == sorted(KEYS)
    props = onnx_props(_payload("onnx"))
    assert sorted(props) == sorted(KEYS) and json.loads(props["truncations"])[0]["upper"] == 2.0
    assert from_onnx_props(props) == _payload("onnx")


def test_onnx_keys_written_before_the_shared_schema_still_read():
    old = {"edgetrunc.version": "0.1.0", "edgetrunc.source_sha256": "ab",
           "edgetrunc.source": "m.keras", "edgetrunc.precision": "int8",
           "edgetrunc.truncations": '[{"layer": "t", "lower": -1.0, "upper": 1.0}]',
           "onnx.infer": "onnxruntime.quant"}
    assert from_onnx_props(old) == {"edgetrunc_version": "0.1.0", "source_sha256": "ab",
                                    "source": "m.keras", "precision": "int8",
                                    "truncations": [{"layer": "t", "lower": -1.0, "upper": 1.0}]}
    assert from_onnx_props({"producer": "someone else"}) is None


def test_the_reader_reads_models_written_by_convert():
    pytest.importorskip("onnx")
    keras = pytest.importorskip("keras")
    pytest.importorskip("tf2onnx")

    from edgetrunc import Truncation
    from edgetrunc.export import export_onnx, export_tflite, onnx_ops, tflite_ops
    from edgetrunc.export.onnx.exporter import set_onnx_metadata
    from edgetrunc.export.tflite.exporter import embed_tflite_metadata

    inputs = keras.Input((8, 8, 1))
    model = keras.Model(inputs, Truncation(2.0, name="tlu")(inputs))
    content = embed_tflite_metadata(export_tflite(model, "fp32"), _payload("tflite"))
    assert read_metadata(content) == _payload("tflite")
    assert tflite_ops(content) == {"MAXIMUM": 1, "MINIMUM": 1}
    proto = export_onnx(model, "fp32")
    set_onnx_metadata(proto, _payload("onnx"))
    assert read_onnx_metadata(proto) == read_metadata(proto.SerializeToString()) == _payload("onnx")
    assert onnx_ops(proto) == {"Clip": 1} == onnx_ops(proto.SerializeToString())
