"""The pretraining engine: recipes, the Lightning module and data module, ``run_pretraining``.

```python
from eofm.training import load_config, run_pretraining

config = load_config("configs/dino_tiny.yaml", ["trainer.max_steps=20"])
result = run_pretraining(config)          # result.model_path, result.last_checkpoint
```
"""

from eofm.training.config import (
    DataConfig,
    MethodConfig,
    ModelConfig,
    OptimConfig,
    OutputConfig,
    PretrainConfig,
    TrainerConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    parse_override,
)
from eofm.training.data import PretrainDataModule, build_dataset, parse_synthetic
from eofm.training.engine import (
    RunResult,
    TrainingInterrupted,
    build_method,
    resolve_resume,
    run_dir_of,
    run_pretraining,
    validate_config,
)
from eofm.training.module import PretrainModule, ThroughputMonitor

__all__ = [
    "DataConfig",
    "MethodConfig",
    "ModelConfig",
    "OptimConfig",
    "OutputConfig",
    "PretrainConfig",
    "PretrainDataModule",
    "PretrainModule",
    "RunResult",
    "ThroughputMonitor",
    "TrainerConfig",
    "TrainingInterrupted",
    "apply_overrides",
    "build_dataset",
    "build_method",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "parse_override",
    "parse_synthetic",
    "resolve_resume",
    "run_dir_of",
    "run_pretraining",
    "validate_config",
]
