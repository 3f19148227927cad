"""One typed configuration tree for every stage.

A config is a tree of dataclasses (:mod:`.schema`), built from defaults (:mod:`.defaults`), a YAML preset and dotted
command-line overrides (:mod:`.loading`), and checked on the way (:mod:`.checks`). This package imports nothing from
the rest of ``trcgl`` but the error types and the label-set catalogue (``trcgl/data/labelsets/*.yaml``), both leaves.
"""

from trcgl.config.checks import (
    ABLATION_EXTRAS,
    MODE_EXTRAS,
    check_generator_size,
    check_space,
    filters_fidelity,
    validate,
)
from trcgl.config.loading import (
    LOCAL_PATH_KEYS,
    PRESET_DIR,
    absolute_local_paths,
    apply_overrides,
    dump_yaml,
    load_config,
    parse_override,
    preset_path,
)
from trcgl.config.schema import (
    AblationConfig,
    AugmentConfig,
    Config,
    DataConfig,
    DiffusionConfig,
    GenerateConfig,
    GroupConfig,
    LossConfig,
    ModelConfig,
    PipelineConfig,
    RayConfig,
    SplitConfig,
    StorageConfig,
    SweepConfig,
    SynthConfig,
    TableConfig,
    TrainConfig,
    coerce,
    config_hash,
    from_dict,
    to_dict,
)
from trcgl.errors import ConfigError

__all__ = [
    "ABLATION_EXTRAS",
    "LOCAL_PATH_KEYS",
    "MODE_EXTRAS",
    "PRESET_DIR",
    "AblationConfig",
    "AugmentConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "DiffusionConfig",
    "GenerateConfig",
    "GroupConfig",
    "LossConfig",
    "ModelConfig",
    "PipelineConfig",
    "RayConfig",
    "SplitConfig",
    "StorageConfig",
    "SweepConfig",
    "SynthConfig",
    "TableConfig",
    "TrainConfig",
    "absolute_local_paths",
    "apply_overrides",
    "check_generator_size",
    "check_space",
    "coerce",
    "config_hash",
    "dump_yaml",
    "filters_fidelity",
    "from_dict",
    "load_config",
    "parse_override",
    "preset_path",
    "to_dict",
    "validate",
]
