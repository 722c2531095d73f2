"""Detection models: the ResNet backbone with per-stage wiring, Faster R-CNN + FPN, what a model is, its weights.

``ModelConfig.from_name(name)`` says what a named model is (:mod:`genattn.models.config`); ``get_model(name,
weights=...)`` builds one (see :mod:`genattn.models.zoo`); :mod:`genattn.models.weights` reads every checkpoint
file and loads it into the model it holds.
"""

from genattn.models.classes import Classes
from genattn.models.config import BackboneConfig, HeadsConfig, ModelConfig
from genattn.models.detector import FPN, FasterRCNN
from genattn.models.weights import Checkpoint, load_model, read_checkpoint
from genattn.models.zoo import MODELS, ModelInfo, get_model, list_models

__all__ = ["BackboneConfig", "Checkpoint", "Classes", "FPN", "FasterRCNN", "HeadsConfig", "MODELS", "ModelConfig",
           "ModelInfo", "get_model", "list_models", "load_model", "read_checkpoint"]
