"""The tutorial's training step and evaluation in TensorFlow 2: the opponent for
benchmarks/compare_tf.py. Needs the `tf-bench` extra (`pip install -e '.[tf-bench]'`).

    python benchmarks/tf_reference.py train [--batch-size 128] [--steps 50] [--json]
    python benchmarks/tf_reference.py eval [--batch-size 128] [--json]

The same work as `cifarlab bench train|eval --recipe tutorial`, written the way a careful
TensorFlow 2 user would: NHWC tensors, one `tf.function` per step (graph mode, oneDNN on),
tf.nn.conv2d / max_pool2d with SAME padding, tf.nn.lrn, and the data set held in memory as
a uint8 tensor with its distortions done a whole batch at a time inside the step.

One training step: draw 128 random examples; random 24x24 crop, mirror, brightness
(+-63), contrast (0.2-1.8) and per-image standardization, each per image; forward;
cross-entropy plus 0.004 x L2 of the two fully connected weights; plain SGD at 0.1; the
0.9999 moving average of every variable with the update-count warm-up. Evaluation: the
central 24x24 crop, standardized, forward, batch by batch over 10,000 images.

Pixel values do not change the cost, so the data are random uint8 of CIFAR-10's shape.
The first steps (tracing, oneDNN primitive creation) are timed apart and left out of the
rate, as in `cifarlab bench`. Prints a median over repeats; --json puts
{"images_per_second": ...} on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # no start-up banners on stdout/stderr

import tensorflow as tf  # noqa: E402

CROP = 24
NUM_CLASSES = 10


def truncated(shape, std):
    return tf.Variable(tf.random.truncated_normal(shape, stddev=std))


class TutorialTF(tf.Module):
    """conv5x5(64)-pool-LRN, conv5x5(64)-LRN-pool, dense 384, dense 192, logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1_w = truncated([5, 5, 3, 64], 5e-2)
        self.conv1_b = tf.Variable(tf.zeros([64]))
        self.conv2_w = truncated([5, 5, 64, 64], 5e-2)
        self.conv2_b = tf.Variable(tf.fill([64], 0.1))
        self.local3_w = truncated([6 * 6 * 64, 384], 0.04)
        self.local3_b = tf.Variable(tf.fill([384], 0.1))
        self.local4_w = truncated([384, 192], 0.04)
        self.local4_b = tf.Variable(tf.fill([192], 0.1))
        self.logits_w = truncated([192, NUM_CLASSES], 1 / 192.0)
        self.logits_b = tf.Variable(tf.zeros([NUM_CLASSES]))

    def __call__(self, x):  # [B, 24, 24, 3] float32
        lrn = dict(depth_radius=4, bias=1.0, alpha=0.001 / 9.0, beta=0.75)
        x = tf.nn.relu(tf.nn.conv2d(x, self.conv1_w, 1, "SAME") + self.conv1_b)
        x = tf.nn.lrn(tf.nn.max_pool2d(x, 3, 2, "SAME"), **lrn)
        x = tf.nn.relu(tf.nn.conv2d(x, self.conv2_w, 1, "SAME") + self.conv2_b)
        x = tf.nn.max_pool2d(tf.nn.lrn(x, **lrn), 3, 2, "SAME")
        x = tf.reshape(x, [tf.shape(x)[0], -1])
        x = tf.nn.relu(x @ self.local3_w + self.local3_b)
        x = tf.nn.relu(x @ self.local4_w + self.local4_b)
        return x @ self.logits_w + self.logits_b


def standardize(x):
    return tf.image.per_image_standardization(x)


def distort(images):
    """uint8 [B, 32, 32, 3] -> float32 [B, 24, 24, 3], each image its own draw."""
    b = tf.shape(images)[0]
    top = tf.random.uniform([b], 0, 32 - CROP + 1, dtype=tf.int32)
    left = tf.random.uniform([b], 0, 32 - CROP + 1, dtype=tf.int32)
    window = tf.range(CROP)
    x = tf.gather(images, top[:, None] + window, axis=1, batch_dims=1)  # [B, 24, 32, 3]
    x = tf.gather(x, left[:, None] + window, axis=2, batch_dims=1)  # [B, 24, 24, 3]
    x = tf.cast(x, tf.float32)
    flip = tf.random.uniform([b]) < 0.5
    x = tf.where(flip[:, None, None, None], tf.reverse(x, [2]), x)
    x = x + tf.random.uniform([b, 1, 1, 1], -63.0, 63.0)  # brightness
    mean = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
    x = (x - mean) * tf.random.uniform([b, 1, 1, 1], 0.2, 1.8) + mean  # contrast
    return standardize(x)


class Trainer(tf.Module):
    def __init__(self, images, labels, batch_size: int) -> None:
        super().__init__()
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.model = TutorialTF()
        self.variables_list = list(self.model.trainable_variables)
        self.shadows = [tf.Variable(v) for v in self.variables_list]
        self.step = tf.Variable(0, dtype=tf.int64)

    @tf.function
    def train_step(self):
        n = tf.shape(self.images)[0]
        index = tf.random.uniform([self.batch_size], 0, n, dtype=tf.int32)
        x = distort(tf.gather(self.images, index))
        y = tf.gather(self.labels, index)
        with tf.GradientTape() as tape:
            logits = self.model(x)
            cross_entropy = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
            )
            decay = 0.004 * (
                tf.nn.l2_loss(self.model.local3_w) + tf.nn.l2_loss(self.model.local4_w)
            )
            loss = cross_entropy + decay
        grads = tape.gradient(loss, self.variables_list)
        for v, g in zip(self.variables_list, grads, strict=True):
            v.assign_sub(0.1 * g)
        self.step.assign_add(1)
        updates = tf.cast(self.step, tf.float32)
        ema = tf.minimum(0.9999, (1.0 + updates) / (10.0 + updates))
        for shadow, v in zip(self.shadows, self.variables_list, strict=True):
            shadow.assign_sub((1.0 - ema) * (shadow - v))
        return loss

    @tf.function
    def eval_batch(self, images):
        x = tf.cast(images[:, 4 : 4 + CROP, 4 : 4 + CROP, :], tf.float32)
        return self.model(standardize(x))


def random_split(n: int, seed: int):
    g = tf.random.Generator.from_seed(seed)
    images = tf.cast(g.uniform([n, 32, 32, 3], 0, 256, dtype=tf.int32), tf.uint8)
    labels = g.uniform([n], 0, NUM_CLASSES, dtype=tf.int32)
    return images, labels


def bench_train(batch_size: int, steps: int, warmup_steps: int, repeats: int) -> dict:
    images, labels = random_split(50_000, 0)
    trainer = Trainer(images, labels, batch_size)
    start = time.perf_counter()
    for _ in range(warmup_steps):
        loss = trainer.train_step()
    loss.numpy()
    warmup = time.perf_counter() - start
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            loss = trainer.train_step()
        loss.numpy()  # the steps are done when their last loss is
        rates.append(steps * batch_size / (time.perf_counter() - start))
    return {"images_per_second": statistics.median(rates), "runs": rates, "warmup_seconds": warmup}


def bench_eval(batch_size: int, repeats: int, count: int = 10_000) -> dict:
    images, labels = random_split(count, 1)
    trainer = Trainer(images, labels, batch_size)

    def run():
        out = [trainer.eval_batch(images[i : i + batch_size]) for i in range(0, count, batch_size)]
        tf.concat(out, 0).numpy()

    start = time.perf_counter()
    run()
    warmup = time.perf_counter() - start
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        rates.append(count / (time.perf_counter() - start))
    return {"images_per_second": statistics.median(rates), "runs": rates, "warmup_seconds": warmup}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["train", "eval"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=50, help="steps per timed run (train)")
    parser.add_argument("--warmup-steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: TF's default)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    if args.what == "train":
        result = bench_train(args.batch_size, args.steps, args.warmup_steps, args.repeats)
    else:
        result = bench_eval(args.batch_size, args.repeats)
    print(f"TensorFlow {tf.__version__} tutorial {args.what}, batch {args.batch_size}; "
          f"warm-up {result['warmup_seconds']:.1f} s (not in the rate)")  # fmt: skip
    for i, rate in enumerate(result["runs"], 1):
        print(f"  run {i}: {rate:,.0f} images/s")
    print(f"  median: {result['images_per_second']:,.0f} images/s")
    if args.json:
        print(json.dumps({"images_per_second": round(result["images_per_second"], 1),
                          "warmup_seconds": round(result["warmup_seconds"], 2)}))  # fmt: skip


if __name__ == "__main__":
    main()
