"""Tiny deploy nets with known weights whose score depends on a visible property (brightness),
for the tests of the stages that score: crop, tsne, serve."""
import numpy as np

import models.caffe as caffe

# P(good) grows with brightness: global average, then a fixed 2-way inner product. With
# with_fc7, a second branch (4x4 average pooling, then a random 32-way inner product named fc7)
# gives features that also see where things are in the picture.
_INPUT = ('layer { name: "input" type: "Input" top: "data" '
          'input_param { shape { dim: 1 dim: 3 dim: 16 dim: 16 } } }\n')
_FC7 = """
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" pooling_param { pool: AVE kernel_size: 4 stride: 4 } }
layer { name: "fc7" type: "InnerProduct" bottom: "pool" top: "fc7" inner_product_param { num_output: 32 } }
"""
_SCORE = """
layer { name: "gap" type: "Pooling" bottom: "data" top: "gap" pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "gap" top: "fc" inner_product_param { num_output: 2 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def bright_net(folder, with_fc7=False, slope=0.02):
    """Write deploy.prototxt and bright.caffemodel into folder; returns their paths."""
    deploy = folder / ("deploy_fc7.prototxt" if with_fc7 else "deploy.prototxt")
    deploy.write_text('name: "bright"\n' + _INPUT + (_FC7 if with_fc7 else "") + _SCORE)
    net = caffe.Net(str(deploy), caffe.TEST)
    net.params["fc"][0].data[...] = np.array([[-slope] * 3, [slope] * 3])
    net.params["fc"][1].data[...] = 0
    if with_fc7:
        rs = np.random.RandomState(7)
        net.params["fc7"][0].data[...] = rs.normal(0, 0.1, net.params["fc7"][0].data.shape)
        net.params["fc7"][1].data[...] = 0
    weights = deploy.with_suffix(".caffemodel")
    net.save(str(weights))
    return deploy, weights


def skimage_photos():
    """Real photos shipped with scikit-image, as (name, H x W x 3 uint8 RGB)."""
    from skimage import data
    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "camera"):
        img = getattr(data, name)()
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        out.append((name, np.ascontiguousarray(img[..., :3])))
    return out
