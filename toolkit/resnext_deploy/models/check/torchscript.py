"""The forward-pass check for TorchScript: its interpreter is out of reach of hooks and TorchFunctionMode, but its
ops still pass the dispatcher, so a ``TorchDispatchMode`` sees every aten op (with its real tensors) before it runs.

A conv's weight tensor names the conv (by its storage, against ``named_parameters()``); every output is tagged with
the module that produced it; an add is attributed to the deepest module whose own scripted graph holds an add, so
findings name the same block (``layer2.1``) as in eager mode. An operand made inside that block is its main path,
one that came from outside is its shortcut.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from .engine import CheckEngine, ConvSpec, StopForward
from .findings import Site
from .torch_module import KeepModes, make_input, type_name

_ADD_KINDS = frozenset({"aten::add", "aten::add_"})
Key = Tuple[int, Tuple[int, ...], Tuple[int, ...]]


def graph_has_add(module: Any) -> bool:
    """True when this scripted module's *own* forward graph (not its submodules') performs an add."""
    try:
        nodes = list(module.graph.nodes())
    except Exception:  # a submodule without a forward (e.g. a container that is never called)
        return False
    while nodes:
        node = nodes.pop()
        if node.kind() in _ADD_KINDS:
            return True
        for block in node.blocks():
            nodes.extend(block.nodes())
    return False


def tensor_key(t: Any) -> Key:
    return (t.data_ptr(), tuple(t.shape), tuple(t.stride()))


def inside(path: str, block: str) -> bool:
    return block == "" or path == block or path.startswith(block + ".")


def last_line(text: str) -> str:
    """The interpreter's own message without its serialized-code traceback (short, never IR)."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else text


class ScriptWatch:
    """Observes one forward of a ScriptModule op by op and reports its adds and convs to the engine."""

    def __init__(self, torch: Any, model: Any, engine: CheckEngine, flagged_convs: Set[int]) -> None:
        self.torch, self.model, self.engine = torch, model, engine
        self.modules = dict(model.named_modules())
        named = list(model.named_parameters()) + list(model.named_buffers())
        self.owner = {t.data_ptr(): (n.rsplit(".", 1)[0] if "." in n else "") for n, t in named if t.numel()}
        self.adders = [path for path, m in self.modules.items() if graph_has_add(m)]
        self.flagged = {path for path, m in self.modules.items() if id(m) in flagged_convs}
        self.tags: Dict[Key, str] = {}
        self.last = ""  # the module of the last op that ran, for failures we did not foresee
        self.add_ops = {torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor}
        self.conv_ops = {torch.ops.aten.convolution.default}

    def type_of(self, path: str, default: str = "Conv") -> str:
        m = self.modules.get(path)
        return type_name(m) if m is not None else default

    def block_of(self, paths: Sequence[str]) -> str:
        """The deepest module whose own graph adds and that holds the layer producing an operand."""
        best = ""
        for path in paths:
            for cand in self.adders:
                if inside(path, cand) and path != cand and len(cand) > len(best):
                    best = cand
        return best

    def on_op(self, func: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any], tensors: List[Any]) -> Optional[str]:
        """Check the op; returns the tag (module path) its outputs get, None to inherit it from the inputs."""
        param = next((self.owner[t.data_ptr()] for t in tensors if t.data_ptr() in self.owner), None)
        if param is not None:
            self.last = param
        if func in self.conv_ops:
            self.on_conv(param or "", args)
        elif func in self.add_ops and len(args) >= 2 and all(isinstance(t, self.torch.Tensor) for t in args[:2]):
            return self.on_add(args[0], args[1])
        return param

    def on_conv(self, path: str, args: Tuple[Any, ...]) -> None:
        if path in self.flagged:
            raise StopForward()  # already reported statically; running it would only crash
        x, w = args[0], args[1]
        groups = int(args[8]) if len(args) > 8 else 1
        if x.dim() < 3 or w.dim() < 3:
            return
        wshape = tuple(int(s) for s in w.shape)
        spec = ConvSpec(groups=groups, weight_shape=wshape, weight_in=wshape[1], weight_out=wshape[0])
        self.engine.conv(path, self.type_of(path), spec, tuple(int(s) for s in x.shape))

    def on_add(self, a: Any, b: Any) -> Optional[str]:
        if a.dim() < 3 or b.dim() < 3 or a.data_ptr() in self.owner or b.data_ptr() in self.owner:
            return None  # not two feature maps (a bias, a scalar, logits)
        ta, tb = self.tags.get(tensor_key(a), "<input>"), self.tags.get(tensor_key(b), "<input>")
        block = self.block_of([ta, tb])
        ina, inb = inside(ta, block) and ta != block, inside(tb, block) and tb != block
        shortcut = 0 if (inb and not ina) else 1 if (ina and not inb) else None
        site = Site(block, self.type_of(block, type_name(self.model)))
        self.engine.add(site, tuple(a.shape), tuple(b.shape), shortcut)
        return block

    def tag(self, tag: Optional[str], tensors: List[Any], out: Any) -> None:
        from torch.utils._pytree import tree_flatten

        if tag is None:  # no weights of its own: the output comes from where its input came from
            tag = next((self.tags[tensor_key(t)] for t in tensors if t.data_ptr() and tensor_key(t) in self.tags), None)
        if tag is not None:
            for t in tree_flatten(out)[0]:
                if isinstance(t, self.torch.Tensor) and t.data_ptr():
                    self.tags[tensor_key(t)] = tag

    def run(self, shape: Tuple[int, ...]) -> None:
        """One forward on a seeded input; a failure no event explained becomes a forward_error finding."""
        torch = self.torch
        x = make_input(torch, self.model, shape)
        self.tags[tensor_key(x)] = "<input>"
        try:
            with KeepModes(self.model), torch.no_grad(), dispatch_mode(torch, self):
                self.model(x)
        except StopForward:
            pass
        except Exception as exc:
            if not self.engine.report.findings:  # else our finding stopped it: TorchScript re-raised a RuntimeError
                site = Site(self.last, self.type_of(self.last, type_name(self.model)), noun="module")
                self.engine.forward_failed(site, exc, last_line(str(exc)))


_DISPATCH_CLASSES: Dict[str, Any] = {}


def dispatch_mode(torch: Any, watch: ScriptWatch) -> Any:
    """A ``TorchDispatchMode`` that shows every aten op to ``watch`` (the class is made on first use)."""
    cls = _DISPATCH_CLASSES.get("dispatch")
    if cls is None:
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        class ObservedOps(TorchDispatchMode):
            def __init__(self, watch: ScriptWatch) -> None:
                super().__init__()
                self.watch = watch

            def __torch_dispatch__(self, func: Any, types: Any, args: Tuple[Any, ...] = (), kwargs: Any = None) -> Any:
                kwargs = kwargs or {}
                tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
                tag = self.watch.on_op(func, args, kwargs, tensors)
                out = func(*args, **kwargs)
                self.watch.tag(tag, tensors, out)
                return out

        cls = _DISPATCH_CLASSES["dispatch"] = ObservedOps
    return cls(watch)
