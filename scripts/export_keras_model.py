"""Export the tiny Keras CNN of tests/models_tf/ with tf2onnx (a channels-last model as users export it).

    python -m venv /tmp/tf && /tmp/tf/bin/pip install tensorflow-cpu tf2onnx
    /tmp/tf/bin/python scripts/export_keras_model.py --out tests/models_tf/keras_nhwc.onnx

Random init (seeded); the project does not depend on TensorFlow. tf2onnx keeps the convolutions
NCHW between Transposes and flattens channels-last: Transpose(0,2,3,1) -> Reshape whose target is
Cast(Concat(Slice(Cast(Gather(Shape(x), [0,2,3,1]))), [H*W*C])), so channel c owns the Dense
inputs p*C + c.
"""
import argparse

import tensorflow as tf
import tf2onnx


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/models_tf/keras_nhwc.onnx")
    args = ap.parse_args()
    tf.keras.utils.set_random_seed(0)
    layers = tf.keras.layers
    inp = tf.keras.Input((16, 16, 3), name="image")
    h = layers.Conv2D(8, 3, padding="same")(inp)
    h = layers.ReLU()(layers.BatchNormalization()(h))
    h = layers.MaxPool2D()(h)
    h = layers.Add()([h, layers.Conv2D(8, 3, padding="same", activation="relu")(h)])
    h = layers.DepthwiseConv2D(3, padding="same", activation="relu")(h)
    h = layers.Conv2D(16, 3, padding="same", strides=2, activation="relu")(h)
    h = layers.Dense(16, activation="relu")(layers.Flatten()(h))
    model = tf.keras.Model(inp, layers.Dense(10)(h))
    spec = (tf.TensorSpec((None, 16, 16, 3), tf.float32, name="image"),)
    tf2onnx.convert.from_keras(model, input_signature=spec, opset=13, output_path=args.out)


if __name__ == "__main__":
    main()
