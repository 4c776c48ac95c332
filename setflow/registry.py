"""Every name-to-thing table of setflow, in one style.

A :class:`Registry` maps config names to objects (builders, classes, functions). Each table has a
``register_*`` decorator, the same one-line error for an unknown name, and one shared argument
check (:meth:`Registry.check_args`) that compares keyword arguments with the registered object's
signature before anything is built. This module imports nothing from setflow: the modules that
define models, data sets, conditioners, ... import it and register themselves.

Tables whose entries live in a package register on import; a registry made with ``populate``
imports those modules the first time it is looked up, so ``MODELS.get("sortflow")`` works without
importing :mod:`setflow.models` first. A ``populate`` entry ``"pkg.*"`` is the package and every
module in it (:func:`import_submodules`): that is how models and set conditioners are found, so a
new file in :mod:`setflow.models` or :mod:`setflow.nn` that registers itself needs no import list
edited; a lookup that misses scans those packages again for modules added since.

Example:
    >>> shapes = Registry("shape")
    >>> @shapes.register("square")
    ... def square(side: float = 1.0) -> float:
    ...     return side * side
    >>> shapes.get("square")(side=3.0)
    9.0
    >>> shapes.check_args("square", {"sides": 4})
    Traceback (most recent call last):
        ...
    ValueError: unknown arguments for shape 'square': sides; valid: side
    >>> shapes.get("circle")
    Traceback (most recent call last):
        ...
    setflow.registry.RegistryError: unknown shape 'circle'; registered shapes: square
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
from typing import Any, Callable, Generic, Iterator, Mapping, Optional, Sequence, TypeVar

__all__ = [
    "Registry", "RegistryError", "signature_defaults", "signature_names", "import_submodules",
    "MODELS", "DATASETS", "SET_CONDITIONERS", "IMAGE_CONDITIONERS", "SCALE_FNS", "OPTIMIZERS", "PLOTTERS",
    "LATENT_DECODERS", "ACTIVATIONS", "IMAGE_DATASETS", "TOY_DATASETS", "POINTCLOUD_SOURCES", "METRICS",
    "DATA_COMMANDS",
    "register_model", "register_dataset", "register_set_conditioner", "register_image_conditioner",
    "register_scale_fn", "register_optimizer", "register_plotter", "register_latent_decoder",
    "register_activation", "register_image_dataset", "register_toy_dataset", "register_pointcloud_source",
    "register_metric", "register_data_command",
]

T = TypeVar("T")


class RegistryError(KeyError, ValueError):
    """An unknown name (a ``KeyError`` and a ``ValueError``, so either ``except`` catches it)."""

    def __str__(self) -> str:  # KeyError would print the message in quotes twice
        return str(self.args[0]) if self.args else ""


def signature_names(fn: Any) -> tuple[set[str], bool]:
    """(named keyword parameters, takes ``**kwargs``) of a function or of a class's ``__init__``."""
    target = fn.__init__ if inspect.isclass(fn) else fn
    params = inspect.signature(target).parameters.values()
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def signature_defaults(fn: Any) -> dict[str, Any]:
    """``{name: default}`` of the keyword parameters of a function (or a class's ``__init__``) that have one."""
    target = fn.__init__ if inspect.isclass(fn) else fn
    return {p.name: p.default for p in inspect.signature(target).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is not p.empty and p.name != "self"}


def import_submodules(package: str) -> list[str]:
    """Import ``package`` and every module directly in it (every folder on its ``__path__``) not
    imported yet; return the names imported. A module that fails to import raises: a broken file is
    an error, not an entry that silently goes missing."""
    pkg = importlib.import_module(package)
    new = [f"{package}.{m.name}" for m in pkgutil.iter_modules(getattr(pkg, "__path__", []))]
    new = [name for name in new if name not in sys.modules]
    for name in new:
        importlib.import_module(name)
    return new


class Registry(Generic[T]):
    """A named table of ``kind`` objects.

    Args:
        kind: what an entry is, singular (used in error messages: ``unknown model 'x'``).
        populate: dotted module names imported on the first lookup (their imports register
            the entries); ``"pkg.*"``: the package and each of its modules (rescanned on a miss).
        args_label: how :meth:`check_args` names the arguments (``"model_args"`` for models:
            ``unknown model_args for 'sortflow': ...``); default ``arguments for <kind>``.
    """

    def __init__(self, kind: str, populate: Sequence[str] = (), args_label: Optional[str] = None) -> None:
        self.kind = kind
        self.args_label = args_label
        self._populate = tuple(populate)
        self._populated = not self._populate
        self._entries: dict[str, T] = {}
        self._args_of: dict[str, tuple[Any, tuple[str, ...]]] = {}

    # -- registering ---------------------------------------------------------------------------
    def register(self, name: str, obj: Optional[T] = None, *, args_of: Any = None,
                 fixed: Sequence[str] = ()) -> Any:
        """Register ``obj`` under ``name``; without ``obj``, a decorator.

        ``args_of``: for an entry taking ``**kwargs`` that it forwards, the function (or class)
        whose signature lists the accepted arguments; ``fixed`` names those the entry sets itself.
        """
        if not isinstance(name, str) or not name:
            raise TypeError(f"a {self.kind} name must be a non-empty string, got {name!r}")

        def deco(o: T) -> T:
            if name in self._entries and self._entries[name] is not o:
                raise ValueError(f"{self.kind} name {name!r} is registered twice")
            self._entries[name] = o
            if args_of is not None:
                self._args_of[name] = (args_of, tuple(fixed))
            return o

        return deco if obj is None else deco(obj)

    def unregister(self, name: str) -> T:
        """Remove entry ``name`` and return it (for throwaway entries in tests)."""
        obj = self.get(name)
        del self._entries[name]
        self._args_of.pop(name, None)
        return obj

    # -- looking up ----------------------------------------------------------------------------
    def _ensure(self) -> None:
        if not self._populated:
            self._populated = True
            self._scan()

    def _scan(self) -> list[str]:
        """Import the ``populate`` modules (``"pkg.*"``: every module of ``pkg``); the names newly imported."""
        new = []
        for mod in self._populate:
            if mod.endswith(".*"):
                new += import_submodules(mod[:-2])
            else:
                importlib.import_module(mod)
        return new

    def get(self, name: str) -> T:
        """The entry ``name``; an unknown name raises :class:`RegistryError` listing the known ones
        (after a rescan of the ``"pkg.*"`` packages for modules added since the first lookup)."""
        self._ensure()
        try:
            return self._entries[name]
        except TypeError:
            pass
        except KeyError:
            if self._scan() and name in self._entries:
                return self._entries[name]
        raise RegistryError(f"unknown {self.kind} {name!r}; registered {self.kind}s: "
                            f"{', '.join(sorted(self._entries))}")

    __getitem__ = get

    def __contains__(self, name: object) -> bool:
        self._ensure()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        self._ensure()
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        self._ensure()
        return len(self._entries)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return list(self)

    def items(self) -> list[tuple[str, T]]:
        return [(n, self._entries[n]) for n in self]

    def keys(self) -> list[str]:
        return self.names()

    # -- arguments -----------------------------------------------------------------------------
    def arg_names(self, name: str) -> Optional[set[str]]:
        """The keyword arguments entry ``name`` accepts, or ``None`` when its signature cannot say."""
        obj = self.get(name)
        names, var_kw = signature_names(obj)
        if var_kw and name in self._args_of:
            inner, fixed = self._args_of[name]
            inner_names, var_kw = signature_names(inner)
            names = (names | inner_names) - set(fixed)
        return None if var_kw else names

    def arg_defaults(self, name: str) -> dict[str, Any]:
        """The default values of entry ``name``'s keyword arguments (with ``args_of``: those of that
        function too, less ``fixed``); arguments without a default are left out."""
        obj = self.get(name)
        out = signature_defaults(obj)
        if name in self._args_of:
            inner, fixed = self._args_of[name]
            out = {k: v for k, v in {**signature_defaults(inner), **out}.items() if k not in fixed}
        return out

    def check_args(self, name: str, kwargs: Mapping[str, Any]) -> None:
        """Raise a one-line ``ValueError`` naming the keys of ``kwargs`` that entry ``name`` lacks."""
        valid = self.arg_names(name)
        unknown = sorted(set(kwargs) - valid) if valid is not None else []
        if unknown:
            what = f"{self.args_label} for" if self.args_label else f"arguments for {self.kind}"
            raise ValueError(f"unknown {what} {name!r}: {', '.join(unknown)}; "
                             f"valid: {', '.join(sorted(valid))}")

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """``get(name)(*args, **kwargs)`` after :meth:`check_args` on the keywords."""
        self.check_args(name, kwargs)
        return self.get(name)(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"


#: model builders (``model: sortflow`` in a config); ``model_args`` are their keyword arguments
MODELS: Registry = Registry("model", populate=("setflow.models.*",), args_label="model_args")
#: data set loaders (``data: spatial_mnist``) returning an ``ExperimentData``
DATASETS: Registry = Registry("data set", populate=("setflow.data.experiments",), args_label="data_args")
#: equivariant set conditioners ``(B, N, D_in) -> (B, N, D_out)`` (``model_args.conditioner``)
SET_CONDITIONERS: Registry = Registry("set conditioner", populate=("setflow.nn.*",))
#: image coupling conditioners ``(c_in, c_out, hidden, depth) -> module`` (IDF ``model_args.coupling``,
#: ``split_prior``)
IMAGE_CONDITIONERS: Registry = Registry("image conditioner", populate=("setflow.models.idf",))
#: coupling scale functions ``raw -> (scale, log_scale)`` (``model_args.scale_fn``; module-level
#: functions, so couplings pickle)
SCALE_FNS: Registry = Registry("scale_fn", populate=("setflow.transforms.coupling",))
#: optimisers ``(params, lr, weight_decay, ...) -> torch.optim.Optimizer`` (``train.optimizer``)
OPTIMIZERS: Registry = Registry("optimizer", populate=("setflow.train.trainer",))
#: plotters by data kind: ``plot_checkpoint(model, config, data, out_path, n)``
PLOTTERS: Registry = Registry("plotter", populate=("setflow.viz",))
#: decoders ``p(X | z)`` of the latent set flow (``model_args.decoder: set | points``); ``model_args.decoder_args``
#: are their keyword arguments
LATENT_DECODERS: Registry = Registry("latent decoder", populate=("setflow.models.*",), args_label="decoder_args")

#: activation modules (``nn.Module`` classes, not lambdas, so networks pickle) by lower-case name
#: (``model_args.activation``)
ACTIVATIONS: Registry = Registry("activation", populate=("setflow.nn.mlp",))
#: image loaders ``(root, download, max_examples) -> (images, labels, source)`` (numpy arrays per split)
IMAGE_DATASETS: Registry = Registry("image data set", populate=("setflow.data.images",))
#: 2-D toy densities ``(n, seed) -> (n, 2)`` (``data: toy2d``, ``data_args.name``)
TOY_DATASETS: Registry = Registry("toy data set", populate=("setflow.data.toy2d",))
#: 3-D point-cloud sources ``(**options) -> PointClouds``, each taking the options of
#: :func:`setflow.data.pointclouds.load_pointclouds` it uses (``data_args.source``, ``setflow data NAME``)
POINTCLOUD_SOURCES: Registry = Registry("point-cloud source", populate=("setflow.data.pointclouds",))
#: sample metrics by distance: ``SetPairs -> {"mmd", "cov", "1nna", ...}`` (``sample_metrics(metrics=...)``)
METRICS: Registry = Registry("metric", populate=("setflow.metrics.eval",))
#: ``setflow data NAME`` handlers ``(args) -> exit code`` besides the point-cloud sources (which the
#: command takes from :data:`POINTCLOUD_SOURCES`)
DATA_COMMANDS: Registry = Registry("data command", populate=("setflow.cli",))

register_model = MODELS.register
register_dataset = DATASETS.register
register_set_conditioner = SET_CONDITIONERS.register
register_image_conditioner = IMAGE_CONDITIONERS.register
register_scale_fn = SCALE_FNS.register
register_optimizer = OPTIMIZERS.register
register_plotter = PLOTTERS.register
register_latent_decoder = LATENT_DECODERS.register
register_activation = ACTIVATIONS.register
register_image_dataset = IMAGE_DATASETS.register
register_toy_dataset = TOY_DATASETS.register
register_pointcloud_source = POINTCLOUD_SOURCES.register
register_metric = METRICS.register
register_data_command = DATA_COMMANDS.register
