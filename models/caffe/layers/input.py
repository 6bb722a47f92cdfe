"""Input: the net's entry blobs, shaped by ``input_param``; you fill them before forward."""
from ..layer import Layer, register


@register
class Input(Layer):
    type = "Input"
    bottoms = (0, 0)
    tops = (1, None)
    is_source = True

    def setup(self, bottoms):
        shapes = list(self.param.input_param.shape)
        if len(shapes) not in (1, len(self.param.top)):
            raise self.error(f"{len(self.param.top)} tops need 1 or {len(self.param.top)} "
                             f"shapes, got {len(shapes)}", "input_param.shape")
        self._shapes = [tuple(int(d) for d in s.dim) for s in shapes]
        if len(self._shapes) == 1:
            self._shapes *= len(self.param.top)

    def top_shapes(self):
        return self._shapes

    def forward(self, bottoms, params):
        return None
