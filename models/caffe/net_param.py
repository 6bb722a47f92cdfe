"""The NetParameter a Net is built from, as Caffe's Net::Init prepares it: read (a prototxt path,
or a NetParameter) and upgraded from old formats, filtered by the NetState (phase, level,
stages: Caffe's FilterNet), and given a Split layer for every blob with several consumers
(Caffe's InsertSplits, with its names, e.g. ``x_pre_0_split_1``)."""
from __future__ import annotations

import collections
import pathlib

from . import glog, protoio
from .errors import CaffeError
from .proto import caffe_pb2
from .upgrade import upgrade_net


def state_meets_rule(st: caffe_pb2.NetState, rule: caffe_pb2.NetStateRule) -> bool:
    if rule.HasField("phase") and rule.phase != st.phase:
        return False
    if rule.HasField("min_level") and st.level < rule.min_level:
        return False
    if rule.HasField("max_level") and st.level > rule.max_level:
        return False
    if any(s not in st.stage for s in rule.stage):
        return False
    if any(s in st.stage for s in rule.not_stage):
        return False
    return True


def filter_net(net: caffe_pb2.NetParameter, source="<net>") -> caffe_pb2.NetParameter:
    """The layers that the net's state includes (Caffe's FilterNet)."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    for lp in net.layer:
        if len(lp.include) and len(lp.exclude):
            raise CaffeError("specifies both include and exclude rules; use one",
                             path=source, field=f"layer {lp.name!r}")
        included = len(lp.include) == 0
        if included and any(state_meets_rule(net.state, r) for r in lp.exclude):
            included = False
        if not included and any(state_meets_rule(net.state, r) for r in lp.include):
            included = True
        if included:
            out.layer.add().CopyFrom(lp)
        elif glog.enabled():
            for r in lp.include:
                if r.HasField("phase") and r.phase != net.state.phase:
                    glog.info("net.cpp:296", f"The NetState phase ({net.state.phase}) differed "
                              f"from the phase ({r.phase}) specified by a rule in layer {lp.name}")
    return out


def insert_splits(net: caffe_pb2.NetParameter, source="<net>") -> caffe_pb2.NetParameter:
    """Give every consumer of a multiply-consumed top its own copy (Caffe's InsertSplits)."""
    last_top = {}                        # blob name -> (layer index, top index)
    bottom_source = {}                   # (layer, bottom) -> (layer, top)
    consumers = collections.Counter()    # (layer, top) -> number of consumers
    loss_weight = {}
    for i, lp in enumerate(net.layer):
        for j, name in enumerate(lp.bottom):
            if name not in last_top:
                raise CaffeError(f"unknown bottom blob {name!r} (bottom index {j})",
                                 path=source, field=f"layer {lp.name!r}")
            bottom_source[i, j] = last_top[name]
            consumers[last_top[name]] += 1
        for j, name in enumerate(lp.top):
            last_top[name] = (i, j)
        for j in range(min(len(lp.loss_weight), len(lp.top))):
            src = last_top[lp.top[j]]
            loss_weight[src] = lp.loss_weight[j]
            if lp.loss_weight[j]:
                consumers[src] += 1

    def split_blob(layer_name, blob, j, k):
        return f"{blob}_{layer_name}_{j}_split_{k}"

    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    next_split = collections.Counter()
    for i, lp in enumerate(net.layer):
        new = out.layer.add()
        new.CopyFrom(lp)
        for j in range(len(new.bottom)):
            src = bottom_source[i, j]
            if consumers[src] > 1:
                owner = net.layer[src[0]].name
                new.bottom[j] = split_blob(owner, new.bottom[j], src[1], next_split[src])
                next_split[src] += 1
        for j, name in enumerate(lp.top):
            n = consumers[i, j]
            if n > 1:
                w = loss_weight.get((i, j), 0.0)
                split = out.layer.add(name=f"{name}_{lp.name}_{j}_split", type="Split")
                split.bottom.append(name)
                for k in range(n):
                    split.top.append(split_blob(lp.name, name, j, k))
                    if w:
                        split.loss_weight.append(w if k == 0 else 0.0)
                if w:
                    new.ClearField("loss_weight")
                    next_split[i, j] += 1
    return out


def load_net_param(network, source=None) -> tuple[caffe_pb2.NetParameter, str]:
    """A prototxt path (or a NetParameter / prototxt text) -> (upgraded NetParameter, source)."""
    if isinstance(network, caffe_pb2.NetParameter):
        param = caffe_pb2.NetParameter()
        param.CopyFrom(network)
        source = source or f"<net {param.name or 'unnamed'}>"
    else:
        path = pathlib.Path(network)
        param = protoio.read_prototxt(path, caffe_pb2.NetParameter)
        source = str(path)
    return upgrade_net(param, source), source
