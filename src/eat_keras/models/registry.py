"""Model families: one :class:`ArchSpec` per architecture, registered by name.

A record carries everything the rest of the package asks about a family: how to build its blocks,
how its weights are named upstream (the weight-slot table), how to recognise its state dicts and
its ONNX graphs, and the configuration it starts from. ``ModelConfig`` validates ``arch`` against
this registry, ``EfficientATNet`` builds the blocks it names, and the weight importers read the rest.

The built-in families (MN, DyMN) register themselves from their modules, ``eat_keras.models.mn`` and
``eat_keras.models.dymn``; those are imported on the first lookup rather than by this package's
``__init__``, because they import the weight-import code, which itself imports ``eat_keras.models``,
and TensorFlow. Their names are known without importing them (:data:`BUILTIN_FAMILIES`), so that a
configuration can be checked, and presets listed, without TensorFlow. A new family is one module
that calls :func:`register_arch`.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from eat_keras.errors import ConfigError

if TYPE_CHECKING:
    import tf_keras

    from eat_keras.models.config import ModelConfig
    from eat_keras.models.network import EfficientATNet
    from eat_keras.weights.onnx_reader import ParametricOp
    from eat_keras.weights.slots import WeightSlot

#: built-in family name → the module that registers it
BUILTIN_FAMILIES: Mapping[str, str] = {"mn": "eat_keras.models.mn", "dymn": "eat_keras.models.dymn"}


def no_extra_fields(state: Mapping[str, Any]) -> dict[str, Any]:
    """For families whose state dicts fix no configuration beyond width, head and classes."""
    return {}


@dataclasses.dataclass(frozen=True)
class StateDictSignature:
    """How a family's upstream state dict is recognised and which tensors size the network.

    ``stem_key`` names the stem conv's weight: a state dict holding it belongs to the family (it is
    also the anchor for stripping wrapper prefixes such as ``module.``). ``last_conv_key`` names the
    last conv's weight, given the state dict's keys. ``extra_fields`` returns the ModelConfig fields
    the tensors fix besides width, head type and class count (e.g. which DyMN blocks are dynamic).
    """

    stem_key: str
    last_conv_key: Callable[[Collection[str]], str]
    extra_fields: Callable[[Mapping[str, Any]], dict[str, Any]] = no_extra_fields


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    """One model family.

    ``build_blocks(config)``: the Keras layers between stem and last conv of ``EfficientATNet``.
    ``weight_slots(net)``: every weight-bearing unit of a built net, in forward order, with its
    upstream name (``eat_keras.weights.slots``); both importers and ``assign_state_dict`` use it.
    ``state_dict``: how ``.pt`` state dicts of the family look.
    ``onnx_fields(ops, source)``: the ModelConfig fields (``arch`` included) an ONNX graph's
    parametric ops fix if the graph is of this family, else None; None where the family has no
    ONNX import.
    ``default_config``: ModelConfig fields the family starts from (``ModelConfig.for_arch``, and
    the lowest layer when a weight file's configuration is resolved); fields it does not name take
    ModelConfig's defaults.
    """

    name: str
    display_name: str
    build_blocks: Callable[[ModelConfig], list[tf_keras.layers.Layer]]
    weight_slots: Callable[[EfficientATNet], list[WeightSlot]]
    state_dict: StateDictSignature
    onnx_fields: Callable[[Sequence[ParametricOp], str], dict[str, Any] | None] | None = None
    default_config: Mapping[str, Any] = dataclasses.field(default_factory=dict)


_REGISTRY: dict[str, ArchSpec] = {}
_builtins_loaded = False


def register_arch(spec: ArchSpec) -> ArchSpec:
    """Add a family; its name must be new (replacing a family would change loaded models)."""
    builtin_module = BUILTIN_FAMILIES.get(spec.name)
    if builtin_module is None:
        _load_builtin_families()  # the built-ins first, whichever module a program imports first
    elif getattr(spec.build_blocks, "__module__", None) != builtin_module:
        raise ValueError(f"{spec.name!r} is a built-in model family ({builtin_module})")
    if spec.name in _REGISTRY:
        raise ValueError(f"a model family named {spec.name!r} is already registered")
    if "arch" in spec.default_config:
        raise ValueError(f"{spec.name}: default_config must not name arch")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_arch(name: str) -> None:
    """Remove a family added by :func:`register_arch` (tests and plugins that unload)."""
    _REGISTRY.pop(name, None)


def _load_builtin_families() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True  # first: the family modules' own register_arch calls must not recurse
    try:
        for name, module in BUILTIN_FAMILIES.items():
            importlib.import_module(module)
            if name not in _REGISTRY:
                raise ImportError(f"{module} did not register the model family {name!r}")
    except BaseException:
        _builtins_loaded = False  # the next lookup retries and shows the same import error
        raise


def registered_archs() -> tuple[ArchSpec, ...]:
    """Every registered family, built-ins first, then in registration order."""
    _load_builtin_families()
    return tuple(_REGISTRY.values())


def arch_names() -> tuple[str, ...]:
    """Every family's name, in :func:`registered_archs` order; imports no family module."""
    return tuple(dict.fromkeys([*BUILTIN_FAMILIES, *_REGISTRY]))


def check_arch_name(name: str) -> None:
    """ConfigError (a user's config names it) unless a family called ``name`` is registered or
    built in; the family's module is not imported."""
    if not isinstance(name, str) or name not in arch_names():
        raise ConfigError(f"arch must be one of {arch_names()}, got {name!r}")


def get_arch(name: str) -> ArchSpec:
    """The family called ``name``; ConfigError (a user's config names it) when there is none."""
    check_arch_name(name)
    _load_builtin_families()
    if name not in _REGISTRY:  # a built-in family that was unregistered
        raise ConfigError(f"arch must be one of {tuple(_REGISTRY)}, got {name!r}")
    return _REGISTRY[name]
