"""The forward-pass check for an eager ``torch.nn.Module``: forward hooks keep the stack of running modules, a
``TorchFunctionMode`` shows every addition before it runs, and each conv's input is checked in its pre-hook.

A finding names the innermost module that did the add (``layer2.0``, a Bottleneck). Adds where one operand is a
parameter or buffer (a bias, an embedding) or a scalar are not residual adds and are ignored. Hooks are removed
and train/eval flags restored afterwards.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Set, Tuple

from .engine import CheckEngine, StopForward
from .findings import Site
from .torch_module import (
    ADD_NAMES,
    KeepModes,
    conv_dims,
    conv_spec,
    function_mode,
    make_input,
    type_name,
)


class Frame:
    """One running module: its path, the module and the tensors it was called with."""

    __slots__ = ("path", "module", "inputs")

    def __init__(self, path: str, module: Any, inputs: Tuple[Any, ...]) -> None:
        self.path, self.module, self.inputs = path, module, inputs


class EagerWatch:
    """Observes one forward of an eager model and reports its adds and convs to the engine."""

    def __init__(self, torch: Any, model: Any, engine: CheckEngine, flagged_convs: Set[int]) -> None:
        self.torch, self.model, self.engine, self.flagged = torch, model, engine, flagged_convs
        self.stack: List[Frame] = []
        self.paths: Dict[int, str] = {}
        self.conv_dims: Dict[int, int] = {}
        self.weight_ids = {id(t) for t in model.parameters()} | {id(t) for t in model.buffers()}
        self.handles: List[Any] = []

    def current(self) -> Frame:
        return self.stack[-1] if self.stack else Frame("", self.model, ())

    # ---- hooks ------------------------------------------------------------------------------------
    def attach(self) -> None:
        skipped = 0
        for name, m in self.model.named_modules():
            if isinstance(m, self.torch.jit.ScriptModule):
                skipped += 1
                continue
            self.paths.setdefault(id(m), name)
            nd = conv_dims(self.torch, m)
            if nd is not None:
                self.conv_dims[id(m)] = nd
            self.handles.append(m.register_forward_pre_hook(self.pre_hook))
            self.handles.append(m.register_forward_hook(self.post_hook))
        if skipped:
            self.engine.not_covered(
                f"{skipped} TorchScript submodule(s) inside an eager model: the adds inside them (check the "
                "whole model scripted, or the submodules eager)")

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.stack.clear()

    def pre_hook(self, module: Any, args: Tuple[Any, ...]) -> None:
        path = self.paths.get(id(module), "?")
        self.stack.append(Frame(path, module, tuple(a for a in args if isinstance(a, self.torch.Tensor))))
        nd = self.conv_dims.get(id(module))
        if nd is None:
            return
        if id(module) in self.flagged:
            raise StopForward()  # already reported statically; running it would only crash
        x = args[0] if args else None
        if isinstance(x, self.torch.Tensor) and x.dim() in (nd + 1, nd + 2):
            spec = conv_spec(self.torch, module, nd)
            self.engine.conv(path, type_name(module), spec, tuple(int(s) for s in x.shape), channel_axis=-(nd + 1))

    def post_hook(self, module: Any, args: Tuple[Any, ...], output: Any) -> None:
        # Pop up to and including this module's frame (frames left by an exception the user's code caught).
        while self.stack:
            if self.stack.pop().module is module:
                break

    # ---- additions --------------------------------------------------------------------------------
    def on_function(self, func: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
        if getattr(func, "__name__", None) not in ADD_NAMES:
            return
        a = args[0] if args else kwargs.get("input")
        b = args[1] if len(args) > 1 else kwargs.get("other")
        Tensor = self.torch.Tensor
        if not (isinstance(a, Tensor) and isinstance(b, Tensor)):
            return  # tensor + Python scalar
        if (a.dim() < 3 and b.dim() < 3) or a.dim() == 0 or b.dim() == 0:
            return  # not two feature maps (scalars, vectors, logits)
        if isinstance(a, self.torch.nn.Parameter) or isinstance(b, self.torch.nn.Parameter) \
                or id(a) in self.weight_ids or id(b) in self.weight_ids:
            return  # a bias / embedding add, not a residual one
        frame = self.current()
        site = Site(frame.path, type_name(frame.module))
        self.engine.add(site, tuple(a.shape), tuple(b.shape), self.shortcut(frame, a, b))

    def on_result(self, out: Any) -> None:
        pass  # the stack of running modules already says where an add is

    @staticmethod
    def shortcut(frame: Frame, a: Any, b: Any) -> Optional[int]:
        """Which operand is the identity shortcut: the one that *is* the block's input (or has its shape)."""
        ins = frame.inputs
        in_a, in_b = any(a is t for t in ins), any(b is t for t in ins)
        if in_a != in_b:
            return 0 if in_a else 1
        if ins:
            s0, sa, sb = tuple(ins[0].shape), tuple(a.shape), tuple(b.shape)
            if sa == s0 and sb != s0:
                return 0
            if sb == s0 and sa != s0:
                return 1
        return None

    # ---- run --------------------------------------------------------------------------------------
    def run(self, shape: Tuple[int, ...]) -> None:
        """One forward on a seeded input; a failure no event explained becomes a forward_error finding."""
        torch = self.torch
        try:
            self.attach()
            with KeepModes(self.model):
                x = make_input(torch, self.model, shape)
                with torch.no_grad(), function_mode(torch, self):
                    self.model(x)
        except StopForward:
            pass
        except Exception as exc:  # the forward failed somewhere our checks did not foresee
            frame = self.current()
            self.engine.forward_failed(Site(frame.path, type_name(frame.module), noun="module"), exc, str(exc))
        finally:
            self.detach()
